"""Bad input gets a clear 4xx and changes nothing; a duplicate returns what exists."""

import io
import struct
import zlib

import pytest
from PIL import Image

from tests.api.conftest import Api
from tests.helpers import add_members, png_bytes, wait_for_jobs


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header for a 30000x30000 image: cheap to make, ruinous to decode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + width * 3) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    data = bytearray(png_bytes())
    start = data.index(b"IDAT") + 20
    data[start : start + 16] = b"\xff" * 16
    return bytes(data)


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes())).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


BAD_FILES = {
    "corrupt.png": corrupt_png,
    "truncated.jpg": truncated_jpeg,
    "huge.png": huge_png,
    "notes.png": lambda: b"this is a text file, not an image\n",
    "empty.png": lambda: b"",
}


@pytest.fixture
def project_id(api: Api) -> int:
    project_id = api.client.post("/api/v1/projects", json={"name": "uploads"}, headers=api.admin).json()["id"]
    add_members(api.client, api.admin, project_id, "alice")
    return project_id


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_refused_with_a_reason(api: Api, project_id: int, name: str) -> None:
    response = api.client.post(
        f"/api/v1/projects/{project_id}/uploads",
        files={"file": (name, BAD_FILES[name](), "image/png")},
        headers=api.admin,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{name}: ")
    sources = api.client.get(f"/api/v1/projects/{project_id}/sources", headers=api.admin).json()
    assert sources == []
    assert api.client.get("/api/v1/jobs", headers=api.admin).json() == []


def test_duplicate_upload_returns_the_existing_source(api: Api, project_id: int) -> None:
    files = {"file": ("a.png", png_bytes(), "image/png")}
    first = api.client.post(f"/api/v1/projects/{project_id}/uploads", files=files, headers=api.admin)
    second = api.client.post(f"/api/v1/projects/{project_id}/uploads", files=files, headers=api.admin)
    assert first.status_code == second.status_code == 201
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
    assert first.json()["source"]["id"] == second.json()["source"]["id"]
    # Nothing new was made. The second upload may meet the first's pipeline between a step's commit
    # and its send (a follow-up job queued, not yet dispatched) and send that job itself: a duplicate
    # message the job's claim makes harmless. It never makes a job of its own.
    jobs = wait_for_jobs(api.client, api.admin, project_id)
    assert [job["kind"] for job in jobs].count("ingest") == 1
    assert second.json()["job_id"] in (None, *(job["id"] for job in jobs))
    third = api.client.post(f"/api/v1/projects/{project_id}/uploads", files=files, headers=api.admin)
    assert (third.json()["duplicate"], third.json()["job_id"]) == (True, None)  # ready: nothing to do


def test_too_small_images_are_refused(api: Api, project_id: int) -> None:
    tiny = {"file": ("tiny.png", png_bytes(20, 20), "image/png")}
    as_hq = api.client.post(
        f"/api/v1/projects/{project_id}/uploads", files=tiny, data={"kind": "hq"}, headers=api.admin
    )
    assert as_hq.status_code == 422 and "at least 32 pixels" in as_hq.json()["detail"]
    as_lq = api.client.post(f"/api/v1/projects/{project_id}/uploads", files=tiny, headers=api.admin)
    assert as_lq.status_code == 201


def test_wrong_kind_and_unknown_project(api: Api, project_id: int) -> None:
    files = {"file": ("a.png", png_bytes(), "image/png")}
    wrong = api.client.post(
        f"/api/v1/projects/{project_id}/uploads", files=files, data={"kind": "raw"}, headers=api.admin
    )
    assert wrong.status_code == 422
    unknown = api.client.post("/api/v1/projects/999/uploads", files=files, headers=api.admin)
    assert unknown.status_code == 404 and "999" in unknown.json()["detail"]
    missing = api.client.post(f"/api/v1/projects/{project_id}/uploads", headers=api.admin)
    assert missing.status_code == 422


def test_project_names_are_unique(api: Api, project_id: int) -> None:
    again = api.client.post("/api/v1/projects", json={"name": "uploads"}, headers=api.admin)
    assert again.status_code == 409
    assert api.client.get("/api/v1/projects/4242", headers=api.alice).status_code == 404
    patched = api.client.patch(
        f"/api/v1/projects/{project_id}", json={"instructions": "be careful"}, headers=api.admin
    )
    assert patched.json()["instructions"] == "be careful"
    listed = api.client.get("/api/v1/projects", headers=api.alice).json()
    assert [p["name"] for p in listed] == ["uploads"]


def test_an_lq_image_whose_candidates_would_be_too_large_is_refused(api: Api, project_id: int) -> None:
    # x4: a 1600x1600 LQ image makes 6400x6400 candidates, 41 megapixels, over DSPO_MAX_IMAGE_PIXELS.
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1600), (90, 120, 150)).save(buffer, format="PNG")
    files = {"file": ("big-lq.png", buffer.getvalue(), "image/png")}
    refused = api.client.post(
        f"/api/v1/projects/{project_id}/uploads", files=files, data={"kind": "lq"}, headers=api.admin
    )
    assert refused.status_code == 422
    assert "its x4 candidates would be 6400x6400" in refused.json()["detail"]
