from tests.api.conftest import Api


def test_login_me_logout(api: Api) -> None:
    me = api.client.get("/api/v1/auth/me", headers=api.alice)
    assert me.status_code == 200 and me.json()["username"] == "alice" and me.json()["role"] == "annotator"
    assert api.client.post("/api/v1/auth/logout", headers=api.alice).status_code == 204
    assert api.client.get("/api/v1/auth/me", headers=api.alice).status_code == 401


def test_bad_credentials_and_tokens_are_refused(api: Api) -> None:
    wrong = api.client.post("/api/v1/auth/login", data={"username": "alice", "password": "nope-nope"})
    assert wrong.status_code == 401
    assert api.client.get("/api/v1/auth/me").status_code == 401
    bogus = api.client.get("/api/v1/auth/me", headers={"Authorization": "Bearer not-a-token"})
    assert bogus.status_code == 401 and "log in" in bogus.json()["detail"]


def test_admin_manages_users(api: Api) -> None:
    created = api.client.post(
        "/api/v1/users", json={"username": "carol", "password": "carol-password"}, headers=api.admin
    )
    assert created.status_code == 201 and created.json()["role"] == "annotator"
    user_id = created.json()["id"]
    again = api.client.post(
        "/api/v1/users", json={"username": "carol", "password": "carol-password"}, headers=api.admin
    )
    assert again.status_code == 409
    names = [u["username"] for u in api.client.get("/api/v1/users", headers=api.admin).json()]
    assert names == ["root", "alice", "bob", "carol"]
    assert api.client.get(f"/api/v1/users/{user_id}", headers=api.admin).json()["username"] == "carol"
    patched = api.client.patch(f"/api/v1/users/{user_id}", json={"is_active": False}, headers=api.admin)
    assert patched.status_code == 200 and patched.json()["is_active"] is False
    login = api.client.post("/api/v1/auth/login", data={"username": "carol", "password": "carol-password"})
    assert login.status_code == 401
    assert api.client.get("/api/v1/users/9999", headers=api.admin).status_code == 404
    short = api.client.post("/api/v1/users", json={"username": "d", "password": "short"}, headers=api.admin)
    assert short.status_code == 422


def test_admin_cannot_lock_themselves_out(api: Api) -> None:
    me = api.client.get("/api/v1/auth/me", headers=api.admin).json()
    response = api.client.patch(f"/api/v1/users/{me['id']}", json={"role": "annotator"}, headers=api.admin)
    assert response.status_code == 409


def test_annotators_cannot_use_admin_endpoints(api: Api) -> None:
    for method, path in [
        ("get", "/api/v1/users"),
        ("post", "/api/v1/users"),
        ("post", "/api/v1/projects"),
        ("get", "/api/v1/jobs"),
        ("get", "/api/v1/jobs/1"),
        ("get", "/api/v1/projects/1/stats"),
        ("get", "/api/v1/projects/1/sources"),
        ("post", "/api/v1/projects/1/uploads"),
    ]:
        response = api.client.request(method, path, headers=api.alice)
        assert response.status_code == 403, (method, path, response.status_code)
        assert "admin" in response.json()["detail"]


def test_openapi_documents_the_api(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    for path in ["/api/v1/projects/{project_id}/next", "/api/v1/tasks/{task_id}/vote", "/api/v1/auth/login"]:
        assert path in spec["paths"]


def test_changing_a_user_takes_effect_on_tokens_in_use(api: Api) -> None:
    """Tokens are cached in the server process for a few seconds; changing the user must not wait."""
    me = api.client.get("/api/v1/auth/me", headers=api.bob).json()  # bob's token is cached now
    assert api.client.get("/api/v1/users", headers=api.bob).status_code == 403
    promoted = api.client.patch(f"/api/v1/users/{me['id']}", json={"role": "admin"}, headers=api.admin)
    assert promoted.status_code == 200
    assert api.client.get("/api/v1/users", headers=api.bob).status_code == 200
    api.client.patch(f"/api/v1/users/{me['id']}", json={"is_active": False}, headers=api.admin)
    assert api.client.get("/api/v1/auth/me", headers=api.bob).status_code == 401
