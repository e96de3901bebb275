"""`dspo simulate` against a real server (uvicorn in a thread) over HTTP, on SQLite and PostgreSQL: its
annotators drive a project to completion through the REST API, a custom oracle given as
module:callable is used, and its preference becomes the dataset's winner."""

import time
import uuid
from collections.abc import Iterator

import httpx
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from annotation_server.main import create_app
from dspo.cli import ensure_user, main
from dspo.datasets import NATIVE, dataset_dir
from dspo.models import Candidate, Dataset, Task, User, Vote
from dspo.runtime import Runtime
from tests.datasets.helpers import wait_jobs
from tests.helpers import login, png_bytes, serving
from tests.loop import oracles


@pytest.fixture
def server(runtime: Runtime) -> Iterator[tuple[str, dict[str, str]]]:
    """The base URL of a served app and an admin's headers."""
    ensure_user(runtime, "root", "admin", "root-password")
    with serving(create_app(runtime)) as port:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url) as client:
            yield url, login(client, "root", "root-password")


def make_project(
    runtime: Runtime, url: str, admin: dict[str, str], kinds: list[str], **fields: object
) -> int:
    """A project whose uploads (HQ: 96x64 → LQ 24x16, or LQ 24x16) went through the real jobs."""
    body = {"name": uuid.uuid4().hex[:8], "n_candidates": 3, "overlap": 2, "min_area_fraction": 0.05}
    with httpx.Client(base_url=url, headers=admin) as client:
        response = client.post("/api/v1/projects", json=body | {"segmenter": "felzenszwalb"} | fields)
        assert response.status_code == 201, response.text
        project_id = response.json()["id"]
        for seed, kind in enumerate(kinds):
            size = (96, 64) if kind == "hq" else (24, 16)
            upload = client.post(
                f"/api/v1/projects/{project_id}/uploads",
                files={"file": (f"{seed}.png", png_bytes(*size, seed), "image/png")},
                data={"kind": kind, "prompt": f"photo {seed}"},
            )
            assert upload.status_code == 201, upload.text
    assert all(job.state == "succeeded" for job in wait_jobs(runtime, project_id))
    return project_id


def simulate(url: str, admin: dict[str, str], project_id: int, *options: str) -> int:
    token = admin["Authorization"].removeprefix("Bearer ")
    argv = ["simulate", "--url", url, "--project", str(project_id), "--token", token, *options]
    return main(argv)


def wait_dataset(url: str, admin: dict[str, str], project_id: int, body: dict) -> int:
    with httpx.Client(base_url=url, headers=admin) as client:
        response = client.post(f"/api/v1/projects/{project_id}/datasets", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/api/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["state"] == "succeeded", job
        return response.json()["dataset"]["id"]


def test_a_custom_oracle_drives_the_project_to_completion_and_wins(
    runtime: Runtime, server: tuple[str, dict[str, str]]
) -> None:
    url, admin = server
    project_id = make_project(
        runtime, url, admin, ["hq", "hq", "lq"], require_content=True, require_defect=True
    )
    oracles.CALLS.clear()
    options = ["--annotators", "3", "--oracle", "tests.loop.oracles:prefer_lowest_id", "--noise", "0"]
    assert simulate(url, admin, project_id, *options, "--tie-threshold", "0.5") == 0

    assert oracles.CALLS, "the custom oracle was not called"
    by_kind = {q.kind for q in oracles.CALLS}
    assert by_kind == {"instance", "image"}
    assert all((q.mask is None) == (q.kind == "image") for q in oracles.CALLS)
    # HQ where the source was an HQ upload (cropped to the SR size), none for the LQ upload.
    assert {q.hq is None for q in oracles.CALLS} == {True, False}
    assert all(q.hq is None or q.hq.shape == q.candidates[0].shape for q in oracles.CALLS)
    assert {q.prompt for q in oracles.CALLS} == {"photo 0", "photo 1", "photo 2"}

    with runtime.sessions() as session:
        states = dict(
            session.execute(
                select(Task.state, func.count()).where(Task.project_id == project_id).group_by(Task.state)
            ).all()
        )
        assert set(states) == {"complete"}, states
        votes = session.execute(
            select(Vote, User.username)
            .join(User, User.id == Vote.user_id)
            .join(Task, Task.id == Vote.task_id)
            .where(Task.project_id == project_id)
        ).all()
        assert {name for _, name in votes} == {f"sim-p{project_id}-{n}" for n in range(3)}
        assert all(v.outcome == "pick" and len(v.client_submission_id) == 32 for v, _ in votes)
        assert all(v.content_text and v.defect_text == "not the lowest id" for v, _ in votes)
        first = {c.source_id: c.id for c in session.scalars(select(Candidate).where(Candidate.position == 0))}

    dataset_id = wait_dataset(url, admin, project_id, {"exports": []})
    with runtime.sessions() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        records = pq.read_table(dataset_dir(runtime, dataset) / NATIVE / "records.parquet").to_pylist()
    assert len(records) == sum(states.values())
    assert all(r["winner_candidate_id"] == str(first[int(r["source_id"])]) for r in records)


def test_the_built_in_oracle_with_skips_ties_and_position_bias(
    runtime: Runtime, server: tuple[str, dict[str, str]]
) -> None:
    """Every annotator works until nothing is left for it: each task is then complete, or every
    annotator has answered or skipped it. A second run reuses the accounts."""
    url, admin = server
    project_id = make_project(runtime, url, admin, ["hq", "lq"])
    options = ["--annotators", "4", "--oracle", "fidelity", "--skip-rate", "0.2", "--position-bias", "0.3"]
    for seed in ("1", "2"):
        assert simulate(url, admin, project_id, *options, "--seed", seed) == 0
    with runtime.sessions() as session:
        tasks = session.execute(
            select(Task.id, Task.state, Task.required_votes).where(Task.project_id == project_id)
        ).all()
        answered = dict(
            session.execute(
                select(Vote.task_id, func.count())
                .where(Vote.task_id.in_([t.id for t in tasks]))
                .group_by(Vote.task_id)
            ).all()
        )
        outcomes = set(session.scalars(select(Vote.outcome).where(Vote.task_id.in_([t.id for t in tasks]))))
    assert tasks and all(t.state == "complete" or answered.get(t.id, 0) == 4 for t in tasks)
    assert "pick" in outcomes and outcomes <= {"pick", "tie", "skip"}


def test_a_bad_oracle_is_refused_with_a_reason(
    runtime: Runtime, server: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, admin = server
    project_id = make_project(runtime, url, admin, ["lq"])
    assert simulate(url, admin, project_id, "--oracle", "no_such_oracle") == 2
    assert "unknown oracle 'no_such_oracle'" in capsys.readouterr().err
    assert simulate(url, admin, project_id, "--oracle", "tests.loop.oracles:missing") == 2
    assert "cannot load the oracle" in capsys.readouterr().err
    assert (
        simulate(url, admin, project_id, "--oracle", "tests.loop.oracles:wrong_length", "--annotators", "1")
        == 1
    )
    assert "one finite score per candidate (3)" in capsys.readouterr().err
