"""Held-out sources (evaluation only), on SQLite and PostgreSQL: marked at upload over REST or drawn by
the project's seeded fraction, they get no candidates and no tasks, and the real dataset build never
puts them in a dataset, whatever its settings, even when votes on them exist."""

import uuid

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from dspo import jobs
from dspo.datasets import NATIVE, VOTES_FILE, dataset_dir
from dspo.db import session_scope
from dspo.images import sha256_hex
from dspo.ingest import add_source, held_out_by_fraction
from dspo.models import Candidate, Dataset, Project, Source, Task
from dspo.runtime import Runtime
from tests.datasets.helpers import tasks, users, vote, wait_jobs
from tests.datasets.test_build import wait_job
from tests.helpers import png_bytes


def upload(client: TestClient, admin: dict[str, str], project_id: int, seed: int, **fields: str) -> dict:
    response = client.post(
        f"/api/v1/projects/{project_id}/uploads",
        files={"file": (f"{seed}.png", png_bytes(24, 16, seed), "image/png")},
        data={"kind": "lq", **fields},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    return response.json()["source"]


def source_ids(client: TestClient, admin: dict[str, str], project_id: int, **params: object) -> list[int]:
    response = client.get(f"/api/v1/projects/{project_id}/sources", params=params, headers=admin)
    assert response.status_code == 200, response.text
    return [s["id"] for s in response.json()]


def new_project(client: TestClient, admin: dict[str, str], **fields: object) -> int:
    body = {"name": uuid.uuid4().hex[:8], "n_candidates": 3, "overlap": 2, "segmenter": "felzenszwalb"}
    response = client.post(
        "/api/v1/projects", json=body | {"min_area_fraction": 0.05} | fields, headers=admin
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_upload_marks_a_source_held_out_and_it_gets_no_tasks(
    runtime: Runtime, client: TestClient, admin: dict[str, str]
) -> None:
    project_id = new_project(client, admin)
    kept = [upload(client, admin, project_id, seed) for seed in (0, 1)]
    held = upload(client, admin, project_id, 2, held_out="true")
    assert held["held_out"] and not any(s["held_out"] for s in kept)
    assert all(j.state == "succeeded" for j in wait_jobs(runtime, project_id))

    assert source_ids(client, admin, project_id, held_out=True) == [held["id"]]
    assert source_ids(client, admin, project_id, held_out=False) == [s["id"] for s in kept]
    assert source_ids(client, admin, project_id) == sorted([held["id"], *(s["id"] for s in kept)])
    with runtime.sessions() as session:
        row = session.get(Source, held["id"])
        assert row is not None and row.state == "ready" and row.lq_sha256 is not None
        for model in (Task, Candidate):
            count = select(func.count()).select_from(model).where(model.source_id == held["id"])
            assert session.scalar(count) == 0, model
        assert session.scalar(select(func.count()).select_from(Task).where(Task.project_id == project_id)) > 0

    # The same bytes again keep what the first upload decided.
    again = client.post(
        f"/api/v1/projects/{project_id}/uploads",
        files={"file": ("again.png", png_bytes(24, 16, 2), "image/png")},
        data={"held_out": "false"},
        headers=admin,
    )
    assert again.status_code == 201 and again.json()["duplicate"] and again.json()["source"]["held_out"]


def test_the_seeded_fraction_decides_when_the_upload_does_not(
    runtime: Runtime, client: TestClient, admin: dict[str, str]
) -> None:
    project_id = new_project(client, admin, held_out_fraction=0.5, held_out_seed=7)
    sources = [upload(client, admin, project_id, seed) for seed in range(10)]
    explicit = upload(client, admin, project_id, 10, held_out="false")
    assert not explicit["held_out"]
    with runtime.sessions() as session:
        project = session.get(Project, project_id)
        assert project is not None
        expected = [held_out_by_fraction(project, sha256_hex(png_bytes(24, 16, seed))) for seed in range(10)]
    assert [s["held_out"] for s in sources] == expected
    assert 0 < sum(expected) < 10  # both sides are exercised with this seed
    # A fraction of 0 holds nothing out, 1 everything.
    project.held_out_fraction = 0.0
    assert not any(held_out_by_fraction(project, s["upload_sha256"]) for s in sources)
    project.held_out_fraction = 1.0
    assert all(held_out_by_fraction(project, s["upload_sha256"]) for s in sources)


BUILD_SETTINGS = {
    "defaults": {},
    "lenient": {"min_votes": 1, "min_agreement": 0.0, "val_fraction": 0.5},
    "regions only": {"image_level": False, "min_votes": 1, "exports": []},
}


@pytest.mark.parametrize("name", sorted(BUILD_SETTINGS))
def test_held_out_sources_never_reach_a_dataset(
    runtime: Runtime, client: TestClient, admin: dict[str, str], name: str
) -> None:
    """Source 0 gets tasks and votes and is held out only afterwards, so the build meets votes on a
    held-out source; source 3 is held out from its upload; 1 and 2 are the only ones that count."""
    with session_scope(runtime.sessions) as session:
        project = Project(
            name=name, n_candidates=3, overlap=2, min_area_fraction=0.05, segmenter="felzenszwalb"
        )
        session.add(project)
        session.flush()
        ids = [
            add_source(
                session,
                runtime.blobs,
                project,
                png_bytes(24, 16, seed),
                filename=f"{seed}.png",
                kind="lq",
                max_pixels=10**7,
                held_out=seed == 3,
            )[0].id
            for seed in range(4)
        ]
        project_id = project.id
    jobs.submit(runtime, [jobs.JobSpec("ingest", {"source_id": s}, project_id) for s in ids])
    assert all(j.state == "succeeded" for j in wait_jobs(runtime, project_id))
    voters = users(runtime, ["h1", "h2"])
    found = tasks(runtime, project_id)
    assert {t.source_id for t in found} == set(ids[:3])
    for task in found:
        for user_id in voters:
            vote(runtime, task, user_id)
    with session_scope(runtime.sessions) as session:
        row = session.get(Source, ids[0])
        assert row is not None
        row.held_out = True

    response = client.post(
        f"/api/v1/projects/{project_id}/datasets", json=BUILD_SETTINGS[name], headers=admin
    )
    assert response.status_code == 202, response.text
    job = wait_job(client, admin, response.json()["job_id"])
    assert job["state"] == "succeeded", job
    with runtime.sessions() as session:
        dataset = session.get(Dataset, response.json()["dataset"]["id"])
        assert dataset is not None and dataset.state == "published"
        folder = dataset_dir(runtime, dataset) / NATIVE
    records = pq.read_table(folder / "records.parquet").to_pylist()
    assert records and {r["source_id"] for r in records} == {str(ids[1]), str(ids[2])}
    counted = {t.id for t in found if t.source_id in ids[1:3]}
    assert set(pq.read_table(folder / VOTES_FILE).column("task_id").to_pylist()) == counted
    page = client.get(f"/api/v1/datasets/{dataset.id}/records", params={"limit": 1000}, headers=admin).json()
    assert {r["source_id"] for r in page["records"]} == {str(ids[1]), str(ids[2])}
