"""The service layer under the REST routes and the pages, through HTTP: one way to create projects and
users (the same defaults for the API and the form), errors answered as HTML pages on page routes and
as JSON under /api/v1, reads that never wait for SQLite's write lock, read-only sessions that cannot
write on PostgreSQL, derived images written through unique temporary files, and an unexpected error
answered with a 500 that says the connection closes."""

import io
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from annotation_server.main import create_app
from dspo import db
from dspo.models import Project
from dspo.runtime import Runtime
from dspo.services.images import derived_png
from dspo.settings import Settings
from tests.api.conftest import Api


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Defaults that differ from the form's and the schema's, so that where they come from shows."""
    return settings.model_copy(update={"default_candidates": 5, "default_overlap": 2})


def cookie_session(api: Api, username: str, password: str) -> tuple[TestClient, str]:
    """A browser-like client logged in through the login page, and its CSRF token."""
    client = TestClient(api.client.app)
    token = client.get("/login").cookies["dspo_login_csrf"]
    form = {"username": username, "password": password, "csrf_token": token}
    assert client.post("/login", data=form, follow_redirects=False).status_code == 303
    csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', client.get("/").text)
    assert csrf is not None
    return client, csrf.group(1)


def test_the_form_and_the_api_create_projects_with_the_same_defaults(api: Api) -> None:
    browser, csrf = cookie_session(api, "root", "root-password")
    assert 'value="5"' in browser.get("/admin").text, "the form shows the defaults of the settings"
    made = browser.post(
        "/admin/projects", data={"name": "by form", "csrf_token": csrf}, follow_redirects=False
    )
    assert made.status_code == 303
    api.client.post("/api/v1/projects", json={"name": "by api"}, headers=api.admin)
    made_by = {p["name"]: p for p in api.client.get("/api/v1/projects", headers=api.admin).json()}
    for name in ("by form", "by api"):
        assert (made_by[name]["n_candidates"], made_by[name]["overlap"]) == (5, 2), name
    assert made_by["by form"]["segmenter"] == made_by["by api"]["segmenter"] == "regions"


def test_page_routes_answer_errors_as_pages_and_the_api_as_json(api: Api) -> None:
    browser, csrf = cookie_session(api, "root", "root-password")
    api.client.post("/api/v1/projects", json={"name": "taken"}, headers=api.admin)
    cases = [
        (browser.post("/admin/projects", data={"name": "taken", "csrf_token": csrf}), 409, "exists"),
        (
            browser.post("/admin/projects", data={"name": "p", "n_candidates": "99", "csrf_token": csrf}),
            422,
            "n_candidates",
        ),
        (browser.post("/admin/projects", data={"csrf_token": csrf}), 422, "name"),
        (
            browser.post("/admin/users", data={"username": "eve", "password": "short", "csrf_token": csrf}),
            422,
            "password",
        ),
        (
            browser.post(
                "/admin/users", data={"username": "root", "password": "long-enough", "csrf_token": csrf}
            ),
            409,
            "exists",
        ),
        (browser.post("/admin/users", data={"username": "eve", "password": "long-enough"}), 403, "CSRF"),
        (browser.get("/projects/999/annotate"), 404, "project 999 does not exist"),
        (browser.get("/no-such-page"), 404, "Not Found"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (response.request.url, response.text[:300])
        assert response.headers["content-type"].startswith("text/html"), response.request.url
        assert words in response.text and "Cannot show this page" in response.text
    annotator, annotator_csrf = cookie_session(api, "alice", "alice-password")
    refused = annotator.post(
        "/admin/users", data={"username": "eve", "password": "long-enough", "csrf_token": annotator_csrf}
    )
    assert (
        refused.status_code == 403
        and "admin" in refused.text
        and refused.headers["content-type"].startswith("text/html")
    )
    assert (
        TestClient(api.client.app)
        .post("/admin/users", data={}, follow_redirects=False)
        .headers["location"]
        .startswith("/login")
    )
    in_api = api.client.post("/api/v1/projects", json={"name": "taken"}, headers=api.admin)
    assert in_api.status_code == 409 and in_api.json() == {"detail": "a project named 'taken' exists"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_reads_never_wait_for_the_sqlite_write_lock(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    project_id = api.make_project(n_images=1, overlap=1)
    task = api.client.post(f"/api/v1/projects/{project_id}/next", headers=api.alice).json()
    browser, _ = cookie_session(api, "alice", "alice-password")
    monkeypatch.setattr(db, "SQLITE_LOCK_TIMEOUT", 2.0)  # a read that took the lock would fail fast
    with api.runtime.sessions() as writer:  # another request in the middle of a write
        writer.execute(update(Project).where(Project.id == project_id).values(instructions="being edited"))
        reads = [
            api.client.get(f"/api/v1/projects/{project_id}", headers=api.alice),
            api.client.get(f"/api/v1/projects/{project_id}/progress", headers=api.alice),
            api.client.get(f"/api/v1/projects/{project_id}/stats", headers=api.admin),
            api.client.get(task["candidates"][0]["image_url"], headers=api.alice),  # its first render
            api.client.get(task["lq_url"], headers=api.alice),
            browser.get("/"),
        ]
        quiet = TestClient(api.client.app, raise_server_exceptions=False)
        writes = quiet.post(f"/api/v1/tasks/{task['id']}/release", headers=api.alice)
        writer.rollback()
    assert [r.status_code for r in reads] == [200] * len(reads)
    assert writes.status_code == 500, "a write does wait for the lock (and here gives up)"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_read_only_sessions_cannot_write_on_postgresql(runtime: Runtime) -> None:
    with runtime.read_sessions() as session, pytest.raises(DBAPIError, match="read-only transaction"):
        session.execute(update(Project).values(instructions="x"))


def test_two_first_renders_of_the_same_image_each_write_a_whole_file(tmp_path: Path) -> None:
    both_rendering = threading.Barrier(2)
    image = Image.new("RGB", (64, 48), (200, 40, 40))

    def render() -> bytes:
        both_rendering.wait(timeout=10)  # neither finds the file, both render
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: derived_png(tmp_path, "crop:a", render).load(), range(2)))
    assert results[0] == results[1]
    [stored] = [p for p in (tmp_path / "derived").rglob("*") if p.is_file()]
    assert stored.read_bytes() == results[0] and Image.open(stored).size == (64, 48)
    assert derived_png(tmp_path, "crop:a", render).load() == results[0], (
        "read from the file, not rendered again"
    )


def test_first_renders_raced_over_http_give_one_image(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=1)
    task = api.client.post(f"/api/v1/projects/{project_id}/next", headers=api.alice).json()
    urls = [c["image_url"] for c in task["candidates"]] + [task["lq_url"]]
    shutil.rmtree(api.runtime.settings.storage_root / "derived", ignore_errors=True)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda url: api.client.get(url, headers=api.alice), urls * 4))
    for url in urls:
        mine = [a for a in answers if a.request.url.path == url.split("?")[0]]
        assert {a.status_code for a in mine} == {200} and len({a.content for a in mine}) == 1, url
        Image.open(io.BytesIO(mine[0].content)).verify()
    assert not list((api.runtime.settings.storage_root / "derived").rglob(".tmp-*")), "no temporary file left"


def test_an_unexpected_error_is_a_500_that_closes_the_connection(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'not-migrated.db'}", storage_root=tmp_path, _env_file=None
    )  # type: ignore[call-arg]
    runtime = Runtime.from_settings(settings)
    try:
        client = TestClient(create_app(runtime), raise_server_exceptions=False)
        response = client.get("/api/v1/projects", headers={"Authorization": "Bearer some-token"})
        assert response.status_code == 500 and response.headers["connection"] == "close"
        assert response.json()["detail"].startswith("internal error (OperationalError)")
        client.cookies.set("dspo_session", "some-token")
        page = client.get("/")
        assert page.status_code == 500 and "internal error" in page.text
    finally:
        runtime.close()
