"""Scheduled retraining: the tick builds exactly one dataset once K new accepted votes arrived, and
queues exactly one training job (gpu queue) once that dataset is published."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from dspo.datasets import BuildSettings, request_dataset
from dspo.db import session_scope
from dspo.models import Dataset, Job, Project
from dspo.retrain import TRAIN_JOB, retrain_round_key, retrain_tick
from dspo.runtime import Runtime
from tests.datasets.helpers import make_project, tasks, users, vote, wait_jobs
from worker.celery_app import RETRAIN_TASK_NAME


def _jobs(runtime: Runtime, kind: str) -> list[Job]:
    with runtime.sessions() as session:
        return list(session.scalars(select(Job).where(Job.kind == kind)))


def test_tick_builds_once_then_queues_training_once(runtime: Runtime, tmp_path) -> None:
    project_id = make_project(runtime, n_sources=1)
    with session_scope(runtime.sessions) as session:
        project = session.get(Project, project_id)
        assert project is not None
        # K = 7; the model folder does not exist, so the training job fails, with the trainer's message.
        project.retrain_min_votes = 7
        project.train_settings = {"model": str(tmp_path / "no-model"), "args": {"max_steps": 1}}
    u = users(runtime, ["a1", "a2", "a3"])
    found = tasks(runtime, project_id)
    for task in found[:2]:
        for user_id in u:
            vote(runtime, task, user_id)
    vote(runtime, found[2], u[0], outcome="skip")  # skips are not accepted votes
    assert retrain_tick(runtime) == {"datasets": [], "training_jobs": [], "evaluations_closed": []}  # 6 of 7

    vote(runtime, found[2], u[1])
    first = retrain_tick(runtime)
    assert len(first["datasets"]) == 1 and first["training_jobs"] == []
    assert retrain_tick(runtime)["datasets"] == []  # while it builds, and after: no new votes
    wait_jobs(runtime, project_id)
    assert retrain_tick(runtime)["datasets"] == []
    with runtime.sessions() as session:
        [dataset] = session.scalars(select(Dataset)).all()
        assert dataset.state == "published" and dataset.retrain and dataset.train_job_id is not None
    assert len(_jobs(runtime, "dataset_build")) == 1
    assert retrain_tick(runtime) == {"datasets": [], "training_jobs": [], "evaluations_closed": []}
    [train] = _jobs(runtime, TRAIN_JOB)
    assert train.id == dataset.train_job_id and train.payload == {"dataset_id": dataset.id}
    deadline = time.monotonic() + 60
    while (train := _jobs(runtime, TRAIN_JOB)[0]).state not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert train.state == "failed" and "no-model does not exist on this machine" in (train.error or "")


def test_beat_schedule_sends_the_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    from dspo.settings import get_settings
    from worker.celery_app import make_celery

    monkeypatch.setenv("DSPO_BROKER_URL", "memory://")
    get_settings.cache_clear()  # settings are cached per process: read the patched environment, and
    try:  # forget it again afterwards
        app = make_celery()
    finally:
        get_settings.cache_clear()
    entry = app.conf.beat_schedule["retrain"]
    assert entry["task"] == RETRAIN_TASK_NAME and RETRAIN_TASK_NAME in app.tasks
    # The job layer's recovery ticks (dspo/jobs.py) run from the same beat.
    assert {e["task"] for e in app.conf.beat_schedule.values()} <= set(app.tasks)


def test_racing_ticks_make_one_dataset(runtime: Runtime) -> None:
    project_id = make_project(runtime, n_sources=1)
    with session_scope(runtime.sessions) as session:
        project = session.get(Project, project_id)
        assert project is not None
        project.retrain_min_votes = 3
    u = users(runtime, ["a1", "a2", "a3"])
    found = tasks(runtime, project_id)
    for user_id in u:
        vote(runtime, found[0], user_id)
    # Two ticks that both saw no dataset yet, one deciding before and one after a fourth vote came in:
    # their snapshots differ, their round is the same.
    settings = BuildSettings()
    key = retrain_round_key(None)
    first = request_dataset(runtime, project_id, settings, retrain=True, request_key=key, dispatch=False)
    vote(runtime, found[1], u[0])
    second = request_dataset(runtime, project_id, settings, retrain=True, request_key=key, dispatch=False)
    assert first[0] == second[0] and first[2] and not second[2]

    # And ticks that really run at the same time.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: retrain_tick(runtime), range(4)))
    assert all(result["datasets"] == [] for result in results), "the round's dataset exists already"
    with runtime.sessions() as session:
        assert len(session.scalars(select(Dataset)).all()) == 1
