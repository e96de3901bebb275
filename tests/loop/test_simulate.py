"""`dspo simulate` against a real server (uvicorn in a thread) over HTTP, on SQLite and PostgreSQL: its
annotators drive a project to completion through the REST API, a custom oracle given as
module:callable is used, and its preference becomes the dataset's winner."""

import io
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sqlalchemy import func, select

from annotation_server.main import create_app
from dspo.cli import ensure_user, main
from dspo.datasets import NATIVE, dataset_dir
from dspo.models import Candidate, Dataset, Source, Task, User, Vote
from dspo.oracles.fidelity import psnr
from dspo.runtime import Runtime
from dspo.services.evaluations import output_position
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
    # --token=: a token may start with "-", which argparse would take for an option.
    argv = ["simulate", "--url", url, "--project", str(project_id), f"--token={token}", *options]
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


def test_skips_ties_and_speed_are_answered_as_set(
    runtime: Runtime, server: tuple[str, dict[str, str]]
) -> None:
    """An annotator whose skip rate is 1 skips every task it is shown; annotators whose tie threshold no
    score gap reaches answer every task with a tie, each after the time per task it was given."""
    url, admin = server
    project_id = make_project(runtime, url, admin, ["lq"])
    skipper = ["--annotators", "1", "--spread", "0", "--oracle", "fidelity", "--skip-rate", "1"]
    assert simulate(url, admin, project_id, *skipper) == 0
    slow_tiers = ["--annotators", "3", "--spread", "0", "--oracle", "fidelity", "--tie-threshold", "1e9"]
    assert simulate(url, admin, project_id, *slow_tiers, "--seconds-per-task", "0.3") == 0
    with runtime.sessions() as session:
        votes = session.execute(
            select(User.username, Vote.outcome, Vote.lead_time_ms)
            .join(User, User.id == Vote.user_id)
            .join(Task, Task.id == Vote.task_id)
            .where(Task.project_id == project_id)
        ).all()
        n_tasks = session.scalar(select(func.count()).select_from(Task).where(Task.project_id == project_id))
    first = f"sim-p{project_id}-0"
    skipped = [v for v in votes if v.outcome == "skip"]
    assert skipped and {v.username for v in skipped} == {first}
    answers = [v for v in votes if v.outcome != "skip"]  # the second run's: two per task (overlap 2)
    assert {v.outcome for v in answers} == {"tie"} and len(answers) == 2 * n_tasks
    assert all(v.lead_time_ms >= 300 for v in answers)


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


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _output_pixels(runtime: Runtime, evaluation_id: int) -> dict[int, dict[str, np.ndarray]]:
    """source id -> side -> the round's output, and "hq" -> the source's HQ image, from the store."""
    found: dict[int, dict[str, np.ndarray]] = {}
    with runtime.sessions() as session:
        for c in session.scalars(select(Candidate).where(Candidate.evaluation_id == evaluation_id)):
            side = "a" if c.position == output_position(evaluation_id, "a") else "b"
            found.setdefault(c.source_id, {})[side] = _pixels(runtime.blobs.get(c.sha256))
        for source_id, images in found.items():
            source = session.get(Source, source_id)
            assert source is not None and source.hq_sha256 is not None
            height, width = images["a"].shape[:2]
            images["hq"] = _pixels(runtime.blobs.get(source.hq_sha256))[:height, :width]
    return found


def test_simulated_annotators_answer_an_evaluation_round_as_their_oracle_says(
    runtime: Runtime, server: tuple[str, dict[str, str]]
) -> None:
    """Noise 0, no ties: every answer picks the output with the higher PSNR to HQ, so B wins a source
    exactly when the fidelity oracle, computed here on the stored images, prefers its output; in a
    second round, annotators with a position bias far above any PSNR difference answer only "left"."""
    url, admin = server
    with httpx.Client(base_url=url, headers=admin) as client:
        body = {"name": uuid.uuid4().hex[:8], "n_candidates": 3, "overlap": 2, "segmenter": "felzenszwalb"}
        project_id = client.post("/api/v1/projects", json=body).json()["id"]
        for seed in range(4):
            upload = client.post(
                f"/api/v1/projects/{project_id}/uploads",
                files={"file": (f"{seed}.png", png_bytes(96, 64, seed), "image/png")},
                data={"kind": "hq", "held_out": "true"},
            )
            assert upload.status_code == 201, upload.text
        wait_jobs(runtime, project_id)
        side = {"generator": "classical", "generator_settings": {"methods": ["lanczos"], "denoisers": ["tv"]}}
        exact = ["--annotators", "2", "--oracle", "fidelity", "--noise", "0", "--tie-threshold", "0"]
        results = []
        for prefix, bias in (("plain", "0"), ("biased", "1000")):
            response = client.post(f"/api/v1/projects/{project_id}/evaluations", json={"b": side})
            assert response.status_code == 202, response.text
            evaluation_id = response.json()["id"]
            wait_jobs(runtime, project_id)
            options = [*exact, "--spread", "0", "--prefix", prefix, "--position-bias", bias]
            assert simulate(url, admin, project_id, *options) == 0
            results.append(client.get(f"/api/v1/evaluations/{evaluation_id}").json())

    plain, biased = results
    assert plain["tasks_complete"] == plain["tasks"] == 4 and plain["summary"]["overall"]["answers"] == 8
    for source_id, images in _output_pixels(runtime, plain["evaluation"]["id"]).items():
        whole = np.ones(images["hq"].shape[:2], dtype=bool)
        b_better = psnr(images["b"], images["hq"], whole) > psnr(images["a"], images["hq"], whole)
        numbers = plain["summary"]["per_item"][str(source_id)]
        assert (numbers["wins_b"], numbers["wins_a"]) == ((2, 0) if b_better else (0, 2)), source_id
    assert biased["summary"]["position"]["left_share"] == 1.0
    assert biased["summary"]["overall"]["answers"] == 8 and biased["tasks_complete"] == 4
