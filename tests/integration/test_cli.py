"""The `dspo` command as a user runs it, in a fresh working directory (the embedded default)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx


def dspo(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPO_")}
    return subprocess.run(
        [sys.executable, "-m", "dspo.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_db_upgrade_and_user_create(tmp_path: Path) -> None:
    upgraded = dspo(tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "var" / "dspo.db").exists()
    created = dspo(tmp_path, "user", "create", "eve", "--role", "admin", "--generate-password")
    assert created.returncode == 0, created.stderr
    assert re.search(r"password: \S{12,}", created.stdout)
    short = dspo(tmp_path, "user", "create", "eve", "--password", "short")
    assert short.returncode == 2 and "at least 8" in short.stderr


def test_demo_prepares_a_project_that_serves(tmp_path: Path) -> None:
    demo = dspo(tmp_path, "demo", "--no-serve", "--images", "1", "--generator", "classical")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "tasks are ready" in demo.stdout
    password = re.search(r"annotator login: annotator\s+password: (\S+)", demo.stdout)
    assert password, demo.stdout

    from fastapi.testclient import TestClient

    from annotation_server.main import create_app
    from dspo.runtime import Runtime
    from dspo.settings import Settings

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'var' / 'dspo.db'}",
        storage_root=tmp_path / "var" / "blobs",
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = Runtime.from_settings(settings)
    with TestClient(create_app(runtime)) as client:
        token = client.post("/api/v1/auth/login", data={"username": "annotator", "password": password[1]})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        task = client.post("/api/v1/projects/1/next", headers=headers)
        assert task.status_code == 200, task.text
        image = client.get(task.json()["candidates"][0]["image_url"], headers=headers)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    runtime.close()


def test_serve_answers_on_its_port(tmp_path: Path, unused_tcp_port: int) -> None:
    assert dspo(tmp_path, "db", "upgrade").returncode == 0
    refused = dspo(tmp_path, "serve", "--port", str(unused_tcp_port))  # the default secret key
    assert refused.returncode != 0 and "DSPO_SECRET_KEY is the default" in refused.stderr, refused.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPO_")} | {"DSPO_DEVELOPMENT": "true"}
    server = subprocess.Popen(
        [sys.executable, "-m", "dspo.cli", "serve", "--port", str(unused_tcp_port)], cwd=tmp_path, env=env
    )
    try:
        for _ in range(100):
            try:
                response = httpx.get(f"http://127.0.0.1:{unused_tcp_port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, "dspo serve exited"
                time.sleep(0.2)
        assert response.json() == {"status": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{unused_tcp_port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}
    finally:
        server.terminate()
        server.wait(timeout=20)
