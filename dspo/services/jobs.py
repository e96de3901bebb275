"""Jobs as admins follow them: state, progress and error, newest first; a failed one retried."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo import jobs
from dspo.datasets import BUILD_JOB, reopen_failed
from dspo.db import session_scope
from dspo.errors import Conflict, NotFound
from dspo.models import Job
from dspo.runtime import Runtime

STATES = ("queued", "running", "succeeded", "failed")


def list_jobs(
    session: Session,
    *,
    project_id: int | None = None,
    state: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[Job]:
    stmt = select(Job).order_by(Job.id.desc())
    if project_id is not None:
        stmt = stmt.where(Job.project_id == project_id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    return list(session.scalars(stmt.offset(offset).limit(limit)))


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def retry_job(runtime: Runtime, job_id: int) -> Job:
    """Run a failed job again from the start (attempts counted anew): after a fix, or for a job whose
    worker died too often. Its outcome is replaced; a job that did not fail cannot be retried."""
    with session_scope(runtime.sessions) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        if job.state != "failed":
            raise Conflict(f"job {job_id} is {job.state}: only a failed job can be retried")
        jobs.reset_for_retry(job)
        if job.kind == BUILD_JOB:
            reopen_failed(session, job.payload["dataset_id"], job.id)  # its dataset failed with it
        queue = job.queue
    jobs.dispatch(runtime, job_id, queue)
    with runtime.read_sessions() as session:
        return get_job(session, job_id)
