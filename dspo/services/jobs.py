"""Jobs as admins follow them: state, progress and error, newest first."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo.errors import NotFound
from dspo.models import Job

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
