"""A build whose blobs are missing or corrupt fails with a message that names the blob, publishes
nothing and leaves no staging folder; asking again once the blob is back builds the same dataset."""

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from dspo.models import Candidate
from dspo.runtime import Runtime
from tests.datasets.helpers import make_project, users, vote_all
from tests.datasets.test_build import wait_job


def test_missing_and_corrupt_blobs_fail_clearly(
    runtime: Runtime, client: TestClient, admin: dict[str, str]
) -> None:
    project_id = make_project(runtime, n_sources=1)
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))
    with runtime.sessions() as session:
        sha = session.scalars(select(Candidate.sha256).where(Candidate.position == 0)).one()
    blob = runtime.blobs.path(sha)
    good = blob.read_bytes()
    datasets_root = Path(runtime.settings.storage_root) / "datasets"
    url = f"/api/v1/projects/{project_id}/datasets"

    for word in ("missing", "corrupt"):
        if word == "missing":
            blob.unlink()
        else:
            blob.write_bytes(b"junk")
        response = client.post(url, json={"exports": ["trl"]}, headers=admin)
        assert response.status_code in (200, 202), response.text
        job = wait_job(client, admin, response.json()["job_id"])
        assert job["state"] == "failed"
        assert sha in job["error"] and word in job["error"], job["error"]
        dataset = client.get(f"/api/v1/datasets/{response.json()['dataset']['id']}", headers=admin).json()
        assert dataset["state"] == "failed" and word in dataset["error"] and dataset["files"] is None
        assert not (datasets_root / str(project_id)).exists()
        assert list((datasets_root / ".staging").iterdir()) == []
        download = client.get(f"/api/v1/datasets/{dataset['id']}/files/dataset.tar", headers=admin)
        assert download.status_code == 409

    blob.write_bytes(good)
    retry = client.post(url, json={"exports": ["trl"]}, headers=admin)
    assert retry.status_code == 200 and retry.json()["dataset"]["id"] == dataset["id"]
    assert retry.json()["job_id"] != job["id"]
    assert wait_job(client, admin, retry.json()["job_id"])["state"] == "succeeded"
    published = client.get(f"/api/v1/datasets/{dataset['id']}", headers=admin).json()
    assert published["state"] == "published" and published["error"] is None
    assert set(published["files"]) == {"dataset.tar", "trl/train.parquet", "trl/validation.parquet"}
