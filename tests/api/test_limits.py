"""Limits before work: request bodies over their route's limit are refused before anything parses
them, an upload's body is not read before its sender is known to be an admin, and every input out of
its column's range (ids, integers, lengths, NUL characters, datetimes) is a 422 or 404, never a 500."""

import socket
from collections.abc import Iterator

import pytest

from annotation_server.main import create_app
from dspo.runtime import Runtime
from tests.api.conftest import Api
from tests.helpers import pick, serving

MiB = 1024 * 1024


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON body streamed in pieces (no Content-Length: chunked transfer encoding)."""
    yield b'{"name": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


def test_a_json_body_over_the_limit_is_refused_whether_its_size_is_declared_or_streamed(api: Api) -> None:
    headers = {**api.admin, "content-type": "application/json"}
    declared = api.client.post("/api/v1/projects", content=b"".join(chunks(2 * MiB)), headers=headers)
    streamed = api.client.post("/api/v1/projects", content=chunks(2 * MiB), headers=headers)
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert "larger than 1048576 bytes" in response.json()["detail"]
        assert response.headers["connection"] == "close"
    assert api.client.get("/api/v1/projects", headers=api.admin).json() == []
    # Within the limit the same route works, and an upload may be larger than a JSON body.
    small = api.client.post("/api/v1/projects", json={"name": "x" * 200}, headers=api.admin)
    assert small.status_code == 201


@pytest.fixture
def live(runtime: Runtime) -> Iterator[int]:
    """The app under uvicorn on a free port, to talk raw HTTP to it; yields the port."""
    with serving(create_app(runtime)) as port:
        yield port


def answer_to_headers_only(port: int, head: str) -> str:
    """Send a request's head and none of its body; the status line the server answers with. A server
    that waited for the body would answer nothing (the socket times out and the test fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head.encode())
        try:
            return sock.recv(65536).split(b"\r\n", 1)[0].decode()
        except TimeoutError:
            pytest.fail("the server waited for the body instead of answering from the headers")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bodies_are_refused_before_they_are_read(live: int, api: Api) -> None:
    json_head = "POST /api/v1/projects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    # 300 MB declared, no token: refused from the Content-Length header.
    assert answer_to_headers_only(live, json_head + f"Content-Length: {300_000_000}\r\n\r\n").endswith(
        "413 Request Entity Too Large"
    )
    upload_head = (
        "POST /api/v1/projects/1/uploads HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {10 * MiB}\r\n"
    )
    # A 10 MB upload (within the upload limit): without a token, or from an annotator, it is refused
    # before its body is read or spooled.
    assert answer_to_headers_only(live, upload_head + "\r\n").endswith("401 Unauthorized")
    annotator = f"Authorization: {api.alice['Authorization']}\r\n"
    assert answer_to_headers_only(live, upload_head + annotator + "\r\n").endswith("403 Forbidden")


def test_inputs_beyond_their_columns_are_422_never_500(api: Api) -> None:
    project_id = api.make_project(n_images=1, overlap=2)
    task = api.client.post(f"/api/v1/projects/{project_id}/next", headers=api.alice).json()
    vote = pick(task)
    url = f"/api/v1/tasks/{task['id']}/vote"

    def status(method: str, path: str, **kwargs: object) -> int:
        return api.client.request(method, path, headers=api.admin, **kwargs).status_code  # type: ignore[arg-type]

    # Integers beyond the Integer / BigInteger columns, in paths, queries and bodies.
    assert status("GET", "/api/v1/projects/3679668546406209") == 422
    assert status("GET", f"/api/v1/tasks/{2**62}/votes") == 404  # a BigInteger id: in range
    assert status("GET", f"/api/v1/tasks/{2**63}/votes") == 422
    assert status("GET", "/api/v1/jobs", params={"project_id": 2**31}) == 422
    assert status("GET", f"/api/v1/projects/{project_id}/sources", params={"offset": 2**40}) == 422
    assert status("POST", url, json={**vote, "lead_time_ms": 3579209625}) == 422
    assert status("POST", url, json={**vote, "best_candidate_id": 2**31}) == 422
    # NUL characters, in JSON, form fields, nested settings and paths.
    nul = api.client.post(url, json={**vote, "content_text": "a\u0000b"}, headers=api.alice)
    assert nul.status_code == 422 and "NUL" in str(nul.json()["detail"])
    assert status("POST", "/api/v1/projects", json={"name": "a\u0000b"}) == 422
    assert (
        status("POST", "/api/v1/projects", json={"name": "n", "generator_settings": {"a": ["\u0000"]}}) == 422
    )
    assert status("POST", "/api/v1/users", json={"username": "eve", "password": "pass\u0000word"}) == 422
    assert status("GET", "/api/v1/datasets/1/files/a%00b") == 422
    login = api.client.post(
        "/api/v1/auth/login", data={"username": "al\u0000ice", "password": "alice-password"}
    )
    assert login.status_code == 422
    # Strings longer than their columns, settings nested too deep, datetimes UTC cannot hold.
    assert status("POST", "/api/v1/projects", json={"name": "n", "generator": "g" * 33}) == 422
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    assert status("POST", "/api/v1/projects", json={"name": "n", "segmenter_settings": {"a": deep}}) == 422
    since = {"since": "0001-01-01T00:00:00+01:00"}
    assert status("GET", f"/api/v1/projects/{project_id}/progress", params=since) == 422
    # Nothing above was recorded.
    assert api.client.post(url, json=vote, headers=api.alice).status_code == 201
    names = [p["name"] for p in api.client.get("/api/v1/projects", headers=api.admin).json()]
    assert len(names) == 1
