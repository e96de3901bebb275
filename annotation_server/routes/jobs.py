from typing import Annotated

from fastapi import APIRouter, Query

from annotation_server.deps import AdminUser, ReadSession, RuntimeDep
from annotation_server.schemas import IdPath, JobOut, Limit, Offset, ProjectFilter, errors
from dspo.models import Job
from dspo.services import jobs

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=list[JobOut], responses=errors(401, 403, 422))
def list_jobs(
    _: AdminUser,
    session: ReadSession,
    project_id: ProjectFilter = None,
    state: Annotated[str | None, Query(pattern=f"^({'|'.join(jobs.STATES)})$")] = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> list[Job]:
    """Jobs, newest first, with their state, progress and error."""
    return jobs.list_jobs(session, project_id=project_id, state=state, offset=offset, limit=limit)


@router.get("/{job_id}", response_model=JobOut, responses=errors(401, 403, 404, 422))
def read_job(job_id: IdPath, _: AdminUser, session: ReadSession) -> Job:
    return jobs.get_job(session, job_id)


@router.post("/{job_id}/retry", response_model=JobOut, responses=errors(401, 403, 404, 409, 422))
def retry_job(job_id: IdPath, _: AdminUser, runtime: RuntimeDep) -> Job:
    """Run a failed job again from the start (its attempts counted anew); 409 unless it failed."""
    return jobs.retry_job(runtime, job_id)
