"""Jobs survive what an operator sees happen (issue 15): Redis stopped while images are uploaded, a
worker killed as a whole mid-job, and a job that kills its worker every time (as the kernel's OOM killer
does). Real `dspo worker` and `dspo beat` processes, a private Redis, the shared PostgreSQL.

A job is held mid-way by turning the blob it reads into a named pipe: its worker blocks on opening it
until the test writes the bytes (the same trick as tests/datasets/test_celery_build.py)."""

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from annotation_server.main import create_app
from dspo.cli import ensure_user
from dspo.models import Job, Source
from dspo.runtime import Runtime
from dspo.settings import Settings
from tests.conftest import production_settings
from tests.faults.conftest import FAST_RECOVERY, PrivateRedis, dspo_process, kill_group, wait_for
from tests.helpers import login, png_bytes

pytestmark = [pytest.mark.faults, pytest.mark.postgres]


@dataclass
class Stack:
    runtime: Runtime
    client: TestClient
    admin: dict[str, str]
    env: dict[str, str]
    logs: Path
    project_id: int

    def upload(self, seed: int, size: tuple[int, int] = (48, 32)) -> dict:
        response = self.client.post(
            f"/api/v1/projects/{self.project_id}/uploads",
            files={"file": (f"{seed}.png", png_bytes(*size, seed), "image/png")},
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: int) -> Job:
        with self.runtime.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def jobs(self) -> list[Job]:
        with self.runtime.sessions() as session:
            return list(
                session.scalars(select(Job).where(Job.project_id == self.project_id).order_by(Job.id))
            )

    def job_of(self, kind: str, source_id: int) -> Job | None:
        found = [j for j in self.jobs() if j.kind == kind and j.payload["source_id"] == source_id]
        return found[-1] if found else None

    def sources_ready(self) -> bool:
        with self.runtime.sessions() as session:
            states = session.scalars(select(Source.state).where(Source.project_id == self.project_id)).all()
        return bool(states) and all(state == "ready" for state in states)

    def worker(self, name: str, *options: str):  # type: ignore[no-untyped-def]
        return dspo_process(self.env, self.logs / f"{name}.log", "worker", *options)

    def hold(self, source_id: int) -> Path:
        """Turn the LQ image of a source into a named pipe; returns its path (see `release`)."""
        with self.runtime.sessions() as session:
            lq = session.get(Source, source_id).lq_sha256  # type: ignore[union-attr]
        blob = self.runtime.blobs.path(lq)
        self.held = blob.read_bytes()
        blob.unlink()
        os.mkfifo(blob)
        return blob

    def release(self, blob: Path) -> None:
        """Give the blocked reader its bytes, then put the ordinary file back in one rename."""
        with open(blob, "wb") as pipe:
            pipe.write(self.held)
        tmp = blob.with_name(blob.name + ".tmp")
        tmp.write_bytes(self.held)
        os.replace(tmp, blob)


@pytest.fixture
def stack(postgres_url: str, private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Stack]:
    settings, env = production_settings(postgres_url, private_redis.url, "dspo-faults", tmp_path)
    env |= FAST_RECOVERY
    fast = {k.removeprefix("DSPO_").lower(): v for k, v in FAST_RECOVERY.items()}
    settings = Settings.model_validate({**settings.model_dump(), **fast})
    runtime = Runtime.from_settings(settings)
    ensure_user(runtime, "root", "admin", "root-password")
    with (
        dspo_process(env, tmp_path / "beat.log", "beat", "--schedule", str(tmp_path / "beat-schedule")),
        TestClient(create_app(runtime)) as client,
    ):
        admin = login(client, "root", "root-password")
        body = {"name": "faults", "n_candidates": 2, "min_area_fraction": 0.05}
        project = client.post("/api/v1/projects", json=body, headers=admin)
        assert project.status_code == 201, project.text
        yield Stack(runtime, client, admin, env, tmp_path, project.json()["id"])
    runtime.close()


def test_uploads_accepted_while_redis_is_down_are_processed_once_it_is_back(
    stack: Stack, private_redis: PrivateRedis
) -> None:
    with stack.worker("worker", "--pool", "threads", "--concurrency", "2"):
        stack.upload(0)
        wait_for(stack.sources_ready, "the first upload's jobs")

        private_redis.stop()
        during = [stack.upload(seed) for seed in (1, 2, 3)]
        assert all(not u["duplicate"] and u["job_id"] for u in during)
        for upload in during:  # written, with no message sent: the relay's to send
            job = stack.job(upload["job_id"])
            assert (job.state, job.dispatched_at) == ("queued", None)
        again = stack.upload(1)  # the same file again while Redis is down: its job, not an error
        assert (again["duplicate"], again["job_id"]) == (True, during[0]["job_id"])

        private_redis.start()
        wait_for(stack.sources_ready, "every upload to be processed after Redis came back")
        jobs = stack.jobs()
        assert len(jobs) == 4 * 4 and all(j.state == "succeeded" for j in jobs), [
            (j.id, j.state) for j in jobs
        ]


def test_a_job_of_a_worker_killed_as_a_whole_finishes_on_another_worker(stack: Stack) -> None:
    source_id = stack.upload(0)["source"]["id"]  # an LQ upload: its ingest job does not read the image
    blob = stack.hold(source_id)
    with stack.worker("first", "--pool", "prefork", "--concurrency", "1") as first:
        wait_for(lambda: (j := stack.job_of("candidates", source_id)) and j.state == "running", "the job")
        killed_worker = stack.job_of("candidates", source_id).worker  # type: ignore[union-attr]
        kill_group(first)
    killed_at = time.monotonic()

    with stack.worker("second", "--pool", "prefork", "--concurrency", "1"):

        def taken_over() -> bool:
            job = stack.job_of("candidates", source_id)
            return job is not None and job.state == "running" and job.worker != killed_worker

        wait_for(taken_over, "another worker to take the job over", timeout=120)
        stack.release(blob)
        job_id = stack.job_of("candidates", source_id).id  # type: ignore[union-attr]
        wait_for(lambda: stack.job(job_id).state == "succeeded", "the job to finish", timeout=120)
        assert time.monotonic() - killed_at < 120
        assert stack.job(job_id).attempts == 2
        wait_for(stack.sources_ready, "the rest of the pipeline")


def test_a_job_that_kills_its_worker_every_time_fails_with_the_reason(stack: Stack) -> None:
    source_id = stack.upload(0)["source"]["id"]
    blob = stack.hold(source_id)
    with stack.worker("worker", "--pool", "prefork", "--concurrency", "1"):
        wait_for(lambda: stack.job_of("candidates", source_id) is not None, "the candidates job")
        job_id = stack.job_of("candidates", source_id).id  # type: ignore[union-attr]
        for attempt in (1, 2, 3):
            # As the OOM killer does: the process that runs the job dies, every time.
            wait_for(
                lambda a=attempt: (j := stack.job(job_id)).state == "running" and j.attempts == a,
                f"attempt {attempt}",
            )
            os.kill(int(stack.job(job_id).worker.rpartition(":")[2]), signal.SIGKILL)  # type: ignore[union-attr]
        wait_for(lambda: stack.job(job_id).state == "failed", "the job to fail")
        job = stack.job(job_id)
        assert job.attempts == 3 and job.error is not None
        assert job.error.startswith("the worker died 3 times while running this job, last seen at "), (
            job.error
        )
        assert stack.job_of("instances", source_id) is None  # nothing after it was queued

        # Fixed (here: the image readable again), an admin retries it.
        retried = stack.client.post(f"/api/v1/jobs/{job_id}/retry", headers=stack.admin)
        assert retried.status_code == 200, retried.text
        wait_for(lambda: stack.job(job_id).state == "running", "the retried job to start")
        stack.release(blob)
        wait_for(stack.sources_ready, "the pipeline after the retry")
        assert stack.job(job_id).attempts == 1
