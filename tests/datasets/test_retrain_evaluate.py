"""Scheduled retraining chained to the end on a tiny upscaler (SQLite): build → train → evaluate →
promote. The training job starts a round of its model against the project's generator on the held-out
sources (retrain_evaluate); annotators prefer the trained model's outputs; the tick closes the round
and, with auto_promote, makes the model the project's generator, recording the decision."""

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dspo import jobs
from dspo.cli import ensure_user
from dspo.db import session_scope
from dspo.ingest import add_source
from dspo.models import Candidate, ModelVersion, Project
from dspo.retrain import retrain_tick
from dspo.runtime import Runtime
from dspo.services.evaluations import evaluate_trained, output_position
from tests.datasets.helpers import make_project, users, vote_all, wait_jobs
from tests.helpers import login, png_bytes, submission_id


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    shutil.copy(sqlite_template, tmp_path / "dspo.db")
    return f"sqlite:///{tmp_path / 'dspo.db'}"


def test_retraining_builds_trains_evaluates_and_promotes(
    runtime: Runtime, client: TestClient, admin: dict[str, str], tmp_path: Path
) -> None:
    from trainer.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "upscaler", "upscaler")
    project_id = make_project(runtime, n_sources=1)
    with session_scope(runtime.sessions) as session:
        project = session.get(Project, project_id)
        assert project is not None
        held = [
            add_source(
                session,
                runtime.blobs,
                project,
                png_bytes(24, 16, seed),
                filename=f"{seed}.png",
                kind="lq",
                max_pixels=10**7,
                held_out=True,
            )[0]
            for seed in (7, 8)
        ]
        session.flush()
        held_ids = [s.id for s in held]
    jobs.submit(runtime, [jobs.JobSpec("ingest", {"source_id": s}, project_id) for s in held_ids])
    wait_jobs(runtime, project_id)
    annotators = ["a1", "a2", "a3"]
    annotator_ids = users(runtime, annotators)
    for user_id in annotator_ids:  # members, so that they get the round's tasks over REST below
        member = client.put(f"/api/v1/projects/{project_id}/members/{user_id}", headers=admin)
        assert member.status_code == 200, member.text
    vote_all(runtime, project_id, annotator_ids)
    args = {"max_steps": 1, "resolution": 64, "batch_size": 1, "lora_rank": 2, "log_every": 1}
    settings = {"retrain_min_votes": 3, "train_settings": {"model": str(model), "args": args}}
    response = client.put(f"/api/v1/projects/{project_id}/retraining", json=settings, headers=admin)
    assert response.status_code == 200, response.text
    changes = {"retrain_evaluate": True, "auto_promote": True}
    response = client.patch(f"/api/v1/projects/{project_id}", json=changes, headers=admin)
    assert response.status_code == 200 and response.json()["auto_promote"], response.text

    assert len(retrain_tick(runtime)["datasets"]) == 1
    wait_jobs(runtime, project_id)
    [train_job_id] = retrain_tick(runtime)["training_jobs"]
    found = wait_jobs(runtime, project_id, timeout=300)
    [train_job] = [j for j in found if j.id == train_job_id]
    assert train_job.state == "succeeded", train_job.error
    evaluation_id = train_job.result["evaluation_id"]
    assert train_job.result["evaluation"] == (
        f"evaluation round {evaluation_id} started against the project's generator"
    )
    assert all(j.state == "succeeded" for j in found), [(j.kind, j.error) for j in found]
    result = client.get(f"/api/v1/evaluations/{evaluation_id}", headers=admin).json()
    version_id = train_job.result["model_version_id"]
    assert result["evaluation"]["state"] == "open" and result["tasks"] == 2
    assert result["evaluation"]["a"]["label"] == "base (classical)"
    assert result["evaluation"]["b"]["model_version_id"] == version_id
    with runtime.sessions() as session:
        b_outputs = set(
            session.scalars(
                select(Candidate.id).where(
                    Candidate.evaluation_id == evaluation_id,
                    Candidate.position == output_position(evaluation_id, "b"),
                )
            )
        )
        assert {
            c.generator for c in session.scalars(select(Candidate).where(Candidate.id.in_(b_outputs)))
        } == {"diffusion"}

    # Every annotator prefers the trained model on both held-out images: 6 of 6, lower bound 0.61.
    for name in annotators:
        ensure_user(runtime, name, "annotator", "password-123")
        headers = login(client, name, "password-123")
        while (
            response := client.post(f"/api/v1/projects/{project_id}/next", headers=headers)
        ).status_code == 200:
            ids = [c["id"] for c in response.json()["candidates"]]
            b = next(i for i in ids if i in b_outputs)
            body = {"best_candidate_id": b, "worst_candidate_id": next(i for i in ids if i != b)}
            vote = client.post(
                f"/api/v1/tasks/{response.json()['id']}/vote",
                json=body | {"client_submission_id": submission_id()},
                headers=headers,
            )
            assert vote.status_code == 201, vote.text
    assert retrain_tick(runtime)["evaluations_closed"] == [evaluation_id]
    [decision] = client.get(f"/api/v1/projects/{project_id}/promotion-decisions", headers=admin).json()
    assert decision["decision"] == "promoted" and decision["wins_b"] == 6
    assert decision["lower_bound"] == pytest.approx(0.6097, abs=1e-4)
    project = client.get(f"/api/v1/projects/{project_id}", headers=admin).json()
    assert project["generator"] == "diffusion" and project["generator_settings"]["model"] == str(model)
    with runtime.sessions() as session:
        row = session.get(Project, project_id)
        assert row is not None and row.model_version_id == version_id
    assert retrain_tick(runtime)["evaluations_closed"] == []


def test_the_evaluation_step_says_why_it_started_no_round(runtime: Runtime) -> None:
    """Off unless the project asks for it; asked for, it needs held-out sources, and says so."""
    project_id = make_project(runtime, n_sources=1)
    with session_scope(runtime.sessions) as session:
        version = ModelVersion(
            project_id=project_id,
            name="v1",
            backbone="upscaler",
            base_model="/m",
            lora_path="/l",
            lora_sha256="0",
        )
        session.add(version)
        session.flush()
        version_id = version.id
    assert evaluate_trained(runtime, version_id) == (
        None,
        "not evaluated: the project's retrain_evaluate is off",
    )
    with session_scope(runtime.sessions) as session:
        project = session.get(Project, project_id)
        assert project is not None
        project.retrain_evaluate = True
    evaluation_id, why = evaluate_trained(runtime, version_id)
    assert evaluation_id is None and "no held-out sources" in why
