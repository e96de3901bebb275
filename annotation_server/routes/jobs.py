from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from annotation_server.deps import AdminUser, SessionDep, get_or_404
from annotation_server.schemas import JobOut
from dspo.models import Job

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=list[JobOut])
def list_jobs(
    _: AdminUser,
    session: SessionDep,
    project_id: int | None = None,
    state: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed)$")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Job]:
    """Jobs, newest first, with their state, progress and error."""
    stmt = select(Job).order_by(Job.id.desc())
    if project_id is not None:
        stmt = stmt.where(Job.project_id == project_id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    return list(session.scalars(stmt.offset(offset).limit(limit)))


@router.get("/{job_id}", response_model=JobOut)
def read_job(job_id: int, _: AdminUser, session: SessionDep) -> Job:
    return get_or_404(session, Job, job_id, "job")
