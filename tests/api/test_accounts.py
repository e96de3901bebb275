"""Account security, through HTTP on SQLite and PostgreSQL: failed logins limited per user name and per
client address (also across server processes), the same argon2 work for unknown user names, sessions
ended by a new password, a deactivation or a logout by cookie, a trusted proxy's forwarded address and
scheme, the pages' security headers, and model versions (server paths) for admins only."""

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import update

from annotation_server.main import create_app
from dspo.db import session_scope, utcnow
from dspo.models import LoginFailure
from dspo.runtime import Runtime
from dspo.services.users import ensure_user
from dspo.settings import Settings
from tests.api.conftest import Api

FAILURES_PER_USER = 3
FAILURES_PER_ADDRESS = 5


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small login limits, and the test client ("testclient") as a trusted proxy."""
    return settings.model_copy(
        update={
            "login_failures_per_user": FAILURES_PER_USER,
            "login_failures_per_address": FAILURES_PER_ADDRESS,
            "trusted_proxies": "testclient",
        }
    )


def log_in(api: Api, username: str, password: str, address: str = "198.51.100.1") -> httpx.Response:
    form = {"username": username, "password": password}
    return api.client.post("/api/v1/auth/login", data=form, headers={"X-Forwarded-For": address})


def cookie_session(api: Api, username: str, password: str) -> TestClient:
    """A browser-like client logged in through the login page (a session cookie)."""
    client = TestClient(api.client.app)
    token = client.get("/login").cookies["dspo_login_csrf"]
    form = {"username": username, "password": password, "csrf_token": token}
    assert client.post("/login", data=form, follow_redirects=False).status_code == 303
    return client


def csrf_of(client: TestClient) -> str:
    page = client.get("/").text
    return re.search(r'name="csrf-token" content="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]


def test_failed_logins_are_limited_per_user_name_and_per_address(api: Api) -> None:
    for _ in range(FAILURES_PER_USER):
        assert log_in(api, "alice", "wrong-password").status_code == 401
    limited = log_in(api, "alice", "alice-password")  # even the right password, until the window ends
    assert limited.status_code == 429 and "user name" in limited.json()["detail"]
    assert 0 < int(limited.headers["Retry-After"]) <= api.runtime.settings.login_window_seconds
    assert log_in(api, "bob", "bob-password").status_code == 200, "other names from the address still work"
    page = TestClient(api.client.app)
    form = {
        "username": "alice",
        "password": "alice-password",
        "csrf_token": page.get("/login").cookies["dspo_login_csrf"],
    }
    answer = page.post("/login", data=form, follow_redirects=False)
    assert answer.status_code == 429 and "text/html" in answer.headers["content-type"]
    assert "Retry-After" in answer.headers and "try again in" in answer.text

    with session_scope(api.runtime.sessions) as session:  # the window has ended
        window = timedelta(seconds=api.runtime.settings.login_window_seconds + 1)
        session.execute(update(LoginFailure).values(window_started_at=utcnow() - window))
    assert log_in(api, "alice", "alice-password").status_code == 200
    assert log_in(api, "alice", "wrong-password").status_code == 401, "a success cleared the count"

    for i in range(FAILURES_PER_ADDRESS):  # one address guessing many names
        assert log_in(api, f"guess{i}", "password", address="203.0.113.7").status_code == 401
    refused = log_in(api, "bob", "bob-password", address="203.0.113.7")
    assert refused.status_code == 429 and "address" in refused.json()["detail"]
    assert log_in(api, "bob", "bob-password", address="203.0.113.8").status_code == 200


def test_unknown_and_inactive_users_cost_the_same_password_check(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str] = []
    verify = PasswordHasher.verify

    def counted(self: PasswordHasher, hash: str, password: str) -> bool:
        checks.append(password)
        return verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counted)
    api.client.patch(f"/api/v1/users/{me(api, api.bob)}", json={"is_active": False}, headers=api.admin)
    for username, address in (("nobody", "198.51.100.2"), ("alice", "198.51.100.3"), ("bob", "198.51.100.4")):
        checks.clear()
        assert log_in(api, username, "bob-password", address).status_code == 401
        assert checks == ["bob-password"], f"{username}: one argon2 check, like any other login"


def me(api: Api, headers: dict[str, str]) -> int:
    return api.client.get("/api/v1/auth/me", headers=headers).json()["id"]


def test_a_new_password_a_deactivation_or_a_reset_ends_every_session(api: Api) -> None:
    alice_id, bob_id = me(api, api.alice), me(api, api.bob)
    browser = cookie_session(api, "alice", "alice-password")
    assert browser.get("/api/v1/auth/me").status_code == 200
    changed = api.client.patch(
        f"/api/v1/users/{alice_id}", json={"password": "new-alice-password"}, headers=api.admin
    )
    assert changed.status_code == 200
    assert api.client.get("/api/v1/auth/me", headers=api.alice).status_code == 401
    assert browser.get("/api/v1/auth/me").status_code == 401
    assert browser.get("/", follow_redirects=False).headers["location"].startswith("/login")
    assert log_in(api, "alice", "new-alice-password").status_code == 200

    bob = log_in(api, "bob", "bob-password").json()["access_token"]
    api.client.patch(f"/api/v1/users/{bob_id}", json={"is_active": False}, headers=api.admin)
    api.client.patch(f"/api/v1/users/{bob_id}", json={"is_active": True}, headers=api.admin)
    assert api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {bob}"}).status_code == 401

    ensure_user(api.runtime, "root", "admin", "root-password-2")  # `dspo user create` resets a password
    # The CLI is another process: a server sees the revocation at its next database lookup (another
    # server process at once, this one once its token cache forgets, DSPO_TOKEN_CACHE_SECONDS).
    with TestClient(create_app(api.runtime)) as other_process:
        assert other_process.get("/api/v1/auth/me", headers=api.admin).status_code == 401


def test_logging_out_by_cookie_through_the_api_ends_the_session(api: Api) -> None:
    browser = cookie_session(api, "alice", "alice-password")
    assert browser.post("/api/v1/auth/logout").status_code == 403, "a cookie needs its CSRF token"
    odd = browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": "é".encode("latin-1")})
    assert odd.status_code == 403
    response = browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf_of(browser)})
    assert response.status_code == 204 and "dspo_session" not in browser.cookies
    assert browser.get("/api/v1/auth/me").status_code == 401
    assert api.client.get("/api/v1/auth/me", headers=api.alice).status_code == 200, "other sessions live on"


def test_a_trusted_proxy_sets_the_scheme_of_cookies_and_the_client_address(
    api: Api, settings: Settings
) -> None:
    behind_tls = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.9"}
    trusted = api.client.get("/login", headers=behind_tls)
    assert "secure" in trusted.headers["set-cookie"].lower()
    assert "secure" not in api.client.get("/login").headers["set-cookie"].lower()
    untrusting = Runtime.from_settings(settings.model_copy(update={"trusted_proxies": "127.0.0.1"}))
    try:
        with TestClient(create_app(untrusting)) as client:
            assert "secure" not in client.get("/login", headers=behind_tls).headers["set-cookie"].lower()
            for _ in range(FAILURES_PER_ADDRESS):  # forged addresses are not believed: one address
                form = {"username": "nobody", "password": "password"}
                client.post("/api/v1/auth/login", data=form, headers={"X-Forwarded-For": f"192.0.2.{_}"})
            assert client.post("/api/v1/auth/login", data=form).status_code == 429
    finally:
        untrusting.close()


def test_pages_carry_security_headers_and_the_api_does_not_need_them(api: Api) -> None:
    for path in ("/login", "/", "/no-such-page"):
        headers = api.client.get(path, follow_redirects=False).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    assert "content-security-policy" not in api.client.get("/api/v1/projects", headers=api.alice).headers


def test_model_versions_name_server_paths_for_admins_only(api: Api) -> None:
    project_id = api.client.post("/api/v1/projects", json={"name": "models"}, headers=api.admin).json()["id"]
    url = f"/api/v1/projects/{project_id}/model-versions"
    assert api.client.get(url, headers=api.alice).status_code == 403
    assert api.client.get(url, headers=api.admin).json() == []


@pytest.mark.slow
def test_the_limit_holds_across_server_processes(
    runtime: Runtime, database_url: str, redis_url: str, unused_tcp_port: int, tmp_path: Path
) -> None:
    """`dspo serve --workers 2`: each request on a new connection, so both processes take some."""
    ensure_user(runtime, "alice", "annotator", "alice-password")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DSPO_")},
        "DSPO_DATABASE_URL": database_url,
        "DSPO_STORAGE_ROOT": str(tmp_path / "blobs"),
        "DSPO_BROKER_URL": redis_url,  # two workers need a broker; no job is sent here
        "DSPO_LOGIN_FAILURES_PER_USER": str(FAILURES_PER_USER),
        "DSPO_SECRET_KEY": secrets.token_urlsafe(32),
    }
    command = [sys.executable, "-m", "dspo.cli", "serve", "--port", str(unused_tcp_port), "--workers", "2"]
    with server(command, env, tmp_path) as url:
        statuses = [
            httpx.post(
                f"{url}/api/v1/auth/login", data={"username": "alice", "password": "wrong-password"}
            ).status_code
            for _ in range(2 * FAILURES_PER_USER)
        ]
    assert statuses == [401] * FAILURES_PER_USER + [429] * FAILURES_PER_USER


@contextmanager
def server(command: list[str], env: dict[str, str], workdir: Path) -> Iterator[str]:
    """`dspo serve` as a subprocess, until it answers /healthz; stopped with its workers at the end."""
    url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
