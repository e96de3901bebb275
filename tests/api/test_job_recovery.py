"""Jobs recover by themselves (dspo/jobs.py), in the embedded mode on SQLite and PostgreSQL: the sweeper
re-queues the job of a worker that went silent and fails it once it has used its attempts, the relay
sends a job whose message was never sent, a duplicate delivery is dropped, an admin retries a failed
job, and uploading the same file again sets its stopped processing going. The same with real Celery
workers, a real Redis outage and real kills is in tests/faults."""

from datetime import timedelta

from sqlalchemy import select, update

from dspo import jobs
from dspo.db import session_scope, utcnow
from dspo.models import Job, Source
from tests.api.conftest import Api
from tests.helpers import png_bytes, wait_for_jobs


def _job(api: Api, job_id: int) -> Job:
    with api.runtime.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _set(api: Api, job_id: int, **values: object) -> None:
    with session_scope(api.runtime.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _first_job(api: Api, project_id: int, kind: str) -> int:
    with api.runtime.sessions() as session:
        return session.scalars(select(Job.id).where(Job.project_id == project_id, Job.kind == kind)).one()


def test_a_silent_workers_job_is_requeued_then_failed_with_the_reason(api: Api) -> None:
    project_id = api.make_project()
    job_id = _first_job(api, project_id, "tasks")
    long_ago = utcnow() - timedelta(hours=1)
    # As a worker that died while running it leaves it: running, its heartbeat old.
    _set(api, job_id, state="running", worker="gone-host:1", heartbeat_at=long_ago, attempts=1)
    assert jobs.sweep(api.runtime) == {"requeued": [job_id], "failed": []}
    wait_for_jobs(api.client, api.admin, project_id)
    job = _job(api, job_id)
    assert (job.state, job.attempts) == ("succeeded", 2), job.error

    _set(api, job_id, state="running", heartbeat_at=long_ago, attempts=3, worker_rss_bytes=1_500_000_000)
    assert jobs.sweep(api.runtime) == {"requeued": [], "failed": [job_id]}
    job = _job(api, job_id)
    assert job.state == "failed" and job.error is not None
    assert job.error.startswith("the worker died 3 times while running this job, last seen at 1.5 GB")
    listed = api.client.get(f"/api/v1/jobs/{job_id}", headers=api.admin).json()
    assert listed["error"] == job.error and listed["worker_rss_bytes"] == 1_500_000_000


def test_a_redelivered_job_whose_worker_lives_is_not_run_twice(api: Api) -> None:
    project_id = api.make_project()
    job_id = _first_job(api, project_id, "ingest")
    _set(api, job_id, state="running", worker="other-host:1", heartbeat_at=utcnow(), attempts=1)
    assert jobs.run_job(api.runtime, job_id) == "running"
    job = _job(api, job_id)
    assert (job.state, job.attempts, job.worker) == ("running", 1, "other-host:1")
    # The same delivery once that worker is silent for too long: it takes the job over.
    _set(api, job_id, heartbeat_at=utcnow() - timedelta(hours=1))
    assert jobs.run_job(api.runtime, job_id) == "succeeded"
    assert _job(api, job_id).attempts == 2


def test_the_relay_sends_a_job_whose_message_was_never_sent(api: Api) -> None:
    project_id = api.make_project()
    with session_scope(api.runtime.sessions) as session:
        [job] = jobs.create(session, [jobs.JobSpec("tasks", {"source_id": 1}, project_id)])
        job_id = job.id
    assert jobs.relay(api.runtime) == []  # just created: its own dispatch may still be on its way
    _set(api, job_id, created_at=utcnow() - timedelta(minutes=1))
    assert jobs.relay(api.runtime) == [job_id]
    wait_for_jobs(api.client, api.admin, project_id)
    assert _job(api, job_id).state == "succeeded"


def test_an_admin_retries_a_failed_job(api: Api) -> None:
    project_id = api.make_project()
    job_id = _first_job(api, project_id, "tasks")
    url = f"/api/v1/jobs/{job_id}/retry"
    refused = api.client.post(url, headers=api.admin)
    assert refused.status_code == 409 and "only a failed job" in refused.json()["detail"]
    _set(api, job_id, state="failed", error="the worker died 3 times while running this job", attempts=3)
    assert api.client.post(url, headers=api.alice).status_code == 403
    assert api.client.post("/api/v1/jobs/999999/retry", headers=api.admin).status_code == 404
    retried = api.client.post(url, headers=api.admin)
    assert retried.status_code == 200, retried.text
    wait_for_jobs(api.client, api.admin, project_id)
    job = _job(api, job_id)
    assert (job.state, job.attempts, job.error) == ("succeeded", 1, None)


def test_uploading_the_same_file_again_restarts_its_stopped_processing(api: Api) -> None:
    body = {"name": "same-file", "n_candidates": 3, "min_area_fraction": 0.02}
    project_id = api.client.post("/api/v1/projects", json=body, headers=api.admin).json()["id"]
    image = png_bytes(48, 32, 7)

    def upload() -> dict:
        response = api.client.post(
            f"/api/v1/projects/{project_id}/uploads",
            files={"file": ("same.png", image, "image/png")},
            headers=api.admin,
        )
        assert response.status_code == 201, response.text
        return response.json()

    first = upload()
    wait_for_jobs(api.client, api.admin, project_id)
    assert upload()["job_id"] is None  # ready: nothing to do

    # Its last step failed (or never ran): the duplicate sets that job going again.
    source_id = first["source"]["id"]
    tasks_job = _first_job(api, project_id, "tasks")
    _set(api, tasks_job, state="failed", error="RuntimeError: boom")
    with session_scope(api.runtime.sessions) as session:
        session.execute(update(Source).where(Source.id == source_id).values(state="uploaded"))
    again = upload()
    assert (again["duplicate"], again["job_id"]) == (True, tasks_job)
    wait_for_jobs(api.client, api.admin, project_id)
    assert _job(api, tasks_job).state == "succeeded"
    with api.runtime.sessions() as session:
        assert session.get(Source, source_id).state == "ready"  # type: ignore[union-attr]
