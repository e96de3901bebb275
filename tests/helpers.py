"""Small helpers for tests that talk to the API."""

import io
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image


def login(client: httpx.Client, username: str, password: str) -> dict[str, str]:
    response = client.post("/api/v1/auth/login", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def add_members(client: httpx.Client, admin: dict[str, str], project_id: int, *usernames: str) -> None:
    """Make these users members of the project, through the API."""
    found = client.get("/api/v1/users", headers=admin)
    assert found.status_code == 200, found.text
    ids = {user["username"]: user["id"] for user in found.json()}
    for name in usernames:
        added = client.put(f"/api/v1/projects/{project_id}/members/{ids[name]}", headers=admin)
        assert added.status_code == 200, added.text


def png_bytes(width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    """A small photo-like image: smooth shapes plus texture, so segments and candidates differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / 7 + seed), np.cos(y / 5), np.sin((x + y) / 11)], axis=-1) * 80 + 128
    base[: height // 2, : width // 2] = [200, 40, 40]
    noise = rng.normal(0, 12, size=base.shape)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def submission_id() -> str:
    return uuid.uuid4().hex


def pick(task: dict[str, Any]) -> dict[str, Any]:
    """The body of a vote on a leased task (from `next`): its first candidate best, its second worst."""
    ids = [c["id"] for c in task["candidates"]]
    return {
        "best_candidate_id": ids[0],
        "worst_candidate_id": ids[1],
        "client_submission_id": submission_id(),
    }


def wait_for_jobs(
    client: httpx.Client, headers: dict[str, str], project_id: int, timeout: float = 120
) -> list:
    """Poll the jobs API until no job of the project is queued or running; return the jobs."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = client.get("/api/v1/jobs", params={"project_id": project_id, "limit": 1000}, headers=headers)
        assert jobs.status_code == 200, jobs.text
        items = jobs.json()
        if items and all(j["state"] in ("succeeded", "failed") for j in items):
            return items
        assert time.monotonic() < deadline, f"jobs still running after {timeout} s: {items}"
        time.sleep(0.1)


@contextmanager
def serving(app: Any) -> Iterator[int]:
    """The ASGI app under uvicorn, in a thread, on a free 127.0.0.1 port; yields the port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
