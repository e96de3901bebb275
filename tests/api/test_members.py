"""Project membership isolates projects, tasks and images; roles decide whose answers one sees; a new
password or a deactivation ends every token and web session of the user."""

from typing import Any

from fastapi.testclient import TestClient

from annotation_server.deps import SESSION_COOKIE, csrf_token_for
from dspo.cli import ensure_user
from tests.api.conftest import Api
from tests.helpers import login, pick

API = "/api/v1"


def _user_id(api: Api, name: str) -> int:
    users = api.client.get(f"{API}/users", headers=api.admin).json()
    return next(u["id"] for u in users if u["username"] == name)


def _image_urls(task: dict[str, Any]) -> list[str]:
    urls = [task["lq_url"], f"{API}/images/sources/{task['source_id']}/lq"]
    urls += [c["image_url"] for c in task["candidates"]]
    urls += [f"{API}/images/candidates/{c['id']}" for c in task["candidates"]]
    if task["mask_url"]:
        urls.append(task["mask_url"])
    return urls


def test_membership_isolates_projects_tasks_and_images(api: Api) -> None:
    mine = api.make_project(members=("alice",), name="mine")
    theirs = api.make_project(n_images=2, members=("bob",))
    listed = api.client.get(f"{API}/projects", headers=api.alice).json()
    assert [p["id"] for p in listed] == [mine]
    assert {p["id"] for p in api.client.get(f"{API}/projects", headers=api.admin).json()} == {mine, theirs}

    task = api.client.post(f"{API}/projects/{theirs}/next", headers=api.bob).json()
    for url in _image_urls(task):
        assert api.client.get(url, headers=api.bob).status_code == 200, url
        refused = api.client.get(url, headers=api.alice)
        assert refused.status_code == 404, url
        assert "member" in refused.json()["detail"]
    for method, path in [
        ("get", f"/projects/{theirs}"),
        ("post", f"/projects/{theirs}/next"),
        ("get", f"/projects/{theirs}/progress"),
        ("get", f"/tasks/{task['id']}/votes"),
        ("post", f"/tasks/{task['id']}/release"),
    ]:
        assert api.client.request(method, API + path, headers=api.alice).status_code == 404, path
    # A vote needs no lease, so it must check membership itself.
    vote = api.client.post(f"{API}/tasks/{task['id']}/vote", json=pick(task), headers=api.alice)
    assert vote.status_code == 404

    alice_id = _user_id(api, "alice")
    added = api.client.put(f"{API}/projects/{theirs}/members/{alice_id}", headers=api.admin)
    assert added.status_code == 200 and added.json()["username"] == "alice"
    assert api.client.put(f"{API}/projects/{theirs}/members/{alice_id}", headers=api.admin).status_code == 200
    members = api.client.get(f"{API}/projects/{theirs}/members", headers=api.admin).json()
    assert [m["username"] for m in members] == ["alice", "bob"]
    for url in _image_urls(task):
        assert api.client.get(url, headers=api.alice).status_code == 200, url
    leased = api.client.post(f"{API}/projects/{theirs}/next", headers=api.alice)
    assert leased.status_code == 200

    # Removing a member hides the project again and gives their leases back at once.
    removed = api.client.delete(f"{API}/projects/{theirs}/members/{alice_id}", headers=api.admin)
    assert removed.status_code == 204
    assert api.client.post(f"{API}/projects/{theirs}/next", headers=api.alice).status_code == 404
    stats = api.client.get(f"{API}/projects/{theirs}/stats", headers=api.admin).json()
    assert stats["live_leases"] == 1  # bob's only
    again = api.client.delete(f"{API}/projects/{theirs}/members/{alice_id}", headers=api.admin)
    assert again.status_code == 404
    assert api.client.put(f"{API}/projects/{theirs}/members/999999", headers=api.admin).status_code == 404


def test_pages_show_members_their_projects_only(api: Api) -> None:
    mine = api.make_project(members=("alice",), name="mine")
    theirs = api.make_project(members=("bob",), name="theirs")
    api.client.cookies.set(SESSION_COOKIE, api.alice["Authorization"].removeprefix("Bearer "))
    try:
        home = api.client.get("/")
        assert f"/projects/{mine}/annotate" in home.text and f"/projects/{theirs}/annotate" not in home.text
        assert api.client.get(f"/projects/{mine}/annotate").status_code == 200
        assert api.client.get(f"/projects/{theirs}/annotate").status_code == 404
        me = api.client.get("/me")
        assert me.status_code == 200 and "mine" in me.text and "theirs" not in me.text
    finally:
        api.client.cookies.clear()


def test_reviewers_see_every_answer_annotators_their_own(api: Api) -> None:
    ensure_user(api.runtime, "rita", "reviewer", "rita-password")
    rita = login(api.client, "rita", "rita-password")
    project_id = api.make_project(overlap=3, members=("alice", "bob", "rita"))
    task = api.client.post(f"{API}/projects/{project_id}/next", headers=api.alice).json()
    for headers in (api.alice, api.bob):
        leased = api.client.post(f"{API}/projects/{project_id}/next", headers=headers).json()
        assert leased["id"] == task["id"]
        assert api.client.post(
            f"{API}/tasks/{task['id']}/vote", json=pick(leased), headers=headers
        ).is_success
    seen = {
        name: len(api.client.get(f"{API}/tasks/{task['id']}/votes", headers=headers).json())
        for name, headers in [("alice", api.alice), ("rita", rita), ("admin", api.admin)]
    }
    assert seen == {"alice": 1, "rita": 2, "admin": 2}
    # A reviewer is no admin.
    assert api.client.get(f"{API}/projects/{project_id}/stats", headers=rita).status_code == 403


def _session_cookie_works(client: TestClient, token: str) -> bool:
    client.cookies.set(SESSION_COOKIE, token)
    try:
        return client.get("/", follow_redirects=False).status_code == 200
    finally:
        client.cookies.clear()


def test_a_password_reset_ends_every_token_and_session(api: Api) -> None:
    alice_id = _user_id(api, "alice")
    other_token = login(api.client, "alice", "alice-password")
    session_token = api.alice["Authorization"].removeprefix("Bearer ")
    assert _session_cookie_works(api.client, session_token)

    # Through the Users page's form, as a team lead does it.
    api.client.cookies.set(SESSION_COOKIE, api.admin["Authorization"].removeprefix("Bearer "))
    csrf = csrf_token_for(api.runtime, api.admin["Authorization"].removeprefix("Bearer "))
    reset = api.client.post(
        f"/admin/users/{alice_id}",
        data={"new_password": "alice-new-password", "csrf_token": csrf},
        follow_redirects=False,
    )
    api.client.cookies.clear()
    assert reset.status_code == 303, reset.text
    for headers in (api.alice, other_token):
        assert api.client.get(f"{API}/auth/me", headers=headers).status_code == 401
    assert not _session_cookie_works(api.client, session_token)
    old = api.client.post(f"{API}/auth/login", data={"username": "alice", "password": "alice-password"})
    assert old.status_code == 401
    new = login(api.client, "alice", "alice-new-password")
    assert api.client.get(f"{API}/auth/me", headers=new).status_code == 200


def test_deactivation_ends_sessions_and_gives_back_leases(api: Api) -> None:
    project_id = api.make_project(members=("alice",))
    assert api.client.post(f"{API}/projects/{project_id}/next", headers=api.alice).status_code == 200
    alice_id = _user_id(api, "alice")
    off = api.client.patch(f"{API}/users/{alice_id}", json={"is_active": False}, headers=api.admin)
    assert off.status_code == 200 and off.json()["is_active"] is False
    assert api.client.get(f"{API}/auth/me", headers=api.alice).status_code == 401
    assert api.client.get(f"{API}/projects/{project_id}/stats", headers=api.admin).json()["live_leases"] == 0
    on = api.client.patch(f"{API}/users/{alice_id}", json={"is_active": True}, headers=api.admin)
    assert on.status_code == 200 and on.json()["is_active"] is True
    again = login(api.client, "alice", "alice-password")
    assert api.client.post(f"{API}/projects/{project_id}/next", headers=again).status_code == 200


def test_roles_change(api: Api) -> None:
    alice_id = _user_id(api, "alice")
    changed = api.client.patch(f"{API}/users/{alice_id}", json={"role": "reviewer"}, headers=api.admin)
    assert changed.status_code == 200 and changed.json()["role"] == "reviewer"
    assert api.client.get(f"{API}/auth/me", headers=api.alice).json()["role"] == "reviewer"
    unknown = api.client.patch(f"{API}/users/{alice_id}", json={"role": "owner"}, headers=api.admin)
    assert unknown.status_code == 422
