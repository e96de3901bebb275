"""Dataset builds on a real Celery worker (prefork) over Redis, against PostgreSQL: a duplicate request
returns the same dataset, and a worker process killed with SIGKILL in the middle of a build publishes
nothing, and the redelivered job (acks_late, reject_on_worker_lost) builds it."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from annotation_server.main import create_app
from dspo.cli import ensure_user
from dspo.dataset_format import verify_dataset
from dspo.models import Dataset, Job, Source
from dspo.runtime import Runtime
from tests.conftest import celery_worker, production_settings
from tests.datasets.helpers import make_project, tasks, users, vote_all
from tests.helpers import login

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def worker(
    postgres_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[tuple[Runtime, subprocess.Popen]]:
    settings, env = production_settings(postgres_url, redis_url, redis_prefix, tmp_path)
    runtime = Runtime.from_settings(settings)
    options = ("--concurrency", "1", "--pool", "prefork")
    try:
        with celery_worker(env, tmp_path / "worker.log", *options) as process:
            yield runtime, process
    finally:
        runtime.close()


def wait_for(predicate, what: str, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def job_row(runtime: Runtime, job_id: int) -> Job:
    with runtime.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_duplicate_and_sigkill_mid_build(worker: tuple[Runtime, subprocess.Popen]) -> None:
    runtime, process = worker
    project_id = make_project(runtime, n_sources=2)  # the pipeline jobs run on the worker too
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))
    ensure_user(runtime, "root", "admin", "root-password")

    # The first blob the build reads (the LQ image of the first task's source) becomes a named pipe:
    # opening it blocks the build right there, mid-way, until the test writes the bytes into it.
    with runtime.sessions() as session:
        lq_sha = session.get(Source, tasks(runtime, project_id)[0].source_id).lq_sha256  # type: ignore[union-attr]
    blob = runtime.blobs.path(lq_sha)
    good = blob.read_bytes()
    blob.unlink()
    os.mkfifo(blob)
    staging = Path(runtime.settings.storage_root) / "datasets" / ".staging"

    with TestClient(create_app(runtime)) as client:
        admin = login(client, "root", "root-password")
        url = f"/api/v1/projects/{project_id}/datasets"
        first = client.post(url, json={"exports": ["webdataset"]}, headers=admin)
        second = client.post(url, json={"exports": ["webdataset"]}, headers=admin)
        assert first.status_code == 202 and second.status_code == 200, (first.text, second.text)
        dataset_id, job_id = first.json()["dataset"]["id"], first.json()["job_id"]
        assert (second.json()["dataset"]["id"], second.json()["job_id"]) == (dataset_id, job_id)

        wait_for(lambda: staging.is_dir() and any(staging.iterdir()), "the build to start")
        time.sleep(0.5)
        [child] = psutil.Process(process.pid).children()
        os.kill(child.pid, signal.SIGKILL)

        # The job is delivered again to a new pool process, which blocks on the same pipe.
        wait_for(lambda: job_row(runtime, job_id).attempts == 2, "the redelivery")
        wait_for(lambda: len(list(staging.iterdir())) == 1, "the killed attempt's staging to go")
        state = client.get(f"/api/v1/datasets/{dataset_id}", headers=admin).json()
        assert state["state"] == "building" and state["files"] is None
        assert not (Path(runtime.settings.storage_root) / "datasets" / str(project_id)).exists()
        assert client.get(f"{url}", headers=admin).json()[0]["state"] != "published"

        with open(blob, "wb") as pipe:
            pipe.write(good)
        wait_for(lambda: job_row(runtime, job_id).state in ("succeeded", "failed"), "the build")
        job = job_row(runtime, job_id)
        assert (job.state, job.attempts) == ("succeeded", 2), job.error
        blob.unlink()
        blob.write_bytes(good)

        published = client.get(f"/api/v1/datasets/{dataset_id}", headers=admin).json()
        assert published["state"] == "published" and published["counts"]["records"] == 8
        root = Path(runtime.settings.storage_root) / "datasets" / str(project_id) / str(dataset_id)
        assert verify_dataset(root / "native")["counts"]["records"] == 8
        assert list(staging.iterdir()) == []
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Dataset)) == 1


def test_beat_builds_once_and_queues_training_on_the_gpu_queue(
    worker: tuple[Runtime, subprocess.Popen], redis_url: str, tmp_path: Path
) -> None:
    import redis

    from dspo.db import session_scope
    from dspo.models import Project

    runtime, _ = worker
    project_id = make_project(runtime, n_sources=1)
    with session_scope(runtime.sessions) as session:
        project = session.get(Project, project_id)
        assert project is not None
        project.retrain_min_votes = 6
        project.train_settings = {"model": str(tmp_path)}
    vote_all(runtime, project_id, users(runtime, ["a1", "a2", "a3"]))  # 12 accepted votes >= 6

    env = {
        **os.environ,
        "DSPO_DATABASE_URL": runtime.settings.database_url,
        "DSPO_BROKER_URL": runtime.settings.broker_url,
        "DSPO_REDIS_KEY_PREFIX": runtime.settings.redis_key_prefix,
        "DSPO_RETRAIN_TICK_SECONDS": "0.5",
    }
    log = (tmp_path / "beat.log").open("w")
    beat = subprocess.Popen(
        [sys.executable, "-m", "dspo.cli", "beat", "--schedule", str(tmp_path / "beat-schedule")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def kinds() -> list[tuple[str, str]]:
            with runtime.sessions() as session:
                return [(j.kind, j.state) for j in session.scalars(select(Job).order_by(Job.id))]

        wait_for(lambda: ("train_model", "queued") in kinds(), "a training job")
        time.sleep(2)  # four more ticks: nothing more may be queued
    finally:
        beat.terminate()
        beat.wait(timeout=20)
        log.close()
    jobs_after = [k for k in kinds() if k[0] in ("dataset_build", "train_model")]
    assert jobs_after == [("dataset_build", "succeeded"), ("train_model", "queued")], jobs_after
    with runtime.sessions() as session:
        [dataset] = session.scalars(select(Dataset)).all()
        assert dataset.retrain and dataset.state == "published"
    # It waits on the gpu queue, which this worker (default queue only) does not consume.
    client = redis.Redis.from_url(redis_url)
    assert client.llen(f"{runtime.settings.redis_key_prefix}:gpu") == 1
