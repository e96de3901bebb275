from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_server.deps import AdminUser, CurrentUser, RuntimeDep, SessionDep, get_or_404
from annotation_server.schemas import (
    AnnotatorCount,
    ProjectCreate,
    ProjectOut,
    ProjectStats,
    ProjectUpdate,
    SourceOut,
    UploadOut,
)
from dspo import jobs
from dspo.db import utcnow
from dspo.images import ImageRejected
from dspo.ingest import add_source
from dspo.models import Job, Lease, Project, Source, Task, User, Vote

router = APIRouter(prefix="/projects", tags=["projects"])


def get_project(session: Session, project_id: int) -> Project:
    return get_or_404(session, Project, project_id, "project")


@router.get("", response_model=list[ProjectOut])
def list_projects(_: CurrentUser, session: SessionDep) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.id)))


@router.post("", response_model=ProjectOut, status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectCreate, _: AdminUser, session: SessionDep, runtime: RuntimeDep) -> Project:
    settings = runtime.settings
    fields = body.model_dump()
    fields["n_candidates"] = body.n_candidates or settings.default_candidates
    fields["overlap"] = body.overlap or settings.default_overlap
    project = Project(**fields)
    session.add(project)
    try:
        session.commit()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a project named {body.name!r} exists") from None
    return project


@router.get("/{project_id}", response_model=ProjectOut)
def read_project(project_id: int, _: CurrentUser, session: SessionDep) -> Project:
    return get_project(session, project_id)


@router.patch("/{project_id}", response_model=ProjectOut)
def update_project(project_id: int, body: ProjectUpdate, _: AdminUser, session: SessionDep) -> Project:
    """Change the instructions, or the overlap k of tasks created from now on."""
    project = get_project(session, project_id)
    for name, value in body.model_dump(exclude_none=True).items():
        setattr(project, name, value)
    session.commit()
    return project


@router.post("/{project_id}/uploads", response_model=UploadOut, status_code=status.HTTP_201_CREATED)
def upload(
    project_id: int,
    file: Annotated[UploadFile, File(description="PNG, JPEG, WebP, TIFF or BMP")],
    _: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    kind: Annotated[str, Form(pattern="^(lq|hq)$", description="lq: use as is; hq: synthesise LQ")] = "lq",
    prompt: Annotated[str, Form(max_length=1000)] = "",
) -> UploadOut:
    """Upload one image. It is validated now; candidates, instances and tasks are made by jobs."""
    project = get_project(session, project_id)
    data = file.file.read(runtime.settings.max_upload_bytes + 1)
    if len(data) > runtime.settings.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{file.filename}: larger than {runtime.settings.max_upload_bytes} bytes",
        )
    try:
        source, duplicate = add_source(
            session,
            runtime.blobs,
            project,
            data,
            filename=file.filename or "",
            kind=kind,
            prompt=prompt,
            max_pixels=runtime.settings.max_image_pixels,
        )
    except ImageRejected as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{file.filename}: {exc}") from None
    job_id = None
    if not duplicate:
        [job_id] = jobs.submit(runtime, [jobs.JobSpec("ingest", {"source_id": source.id}, project.id)])
    return UploadOut(source=SourceOut.model_validate(source), duplicate=duplicate, job_id=job_id)


@router.get("/{project_id}/sources", response_model=list[SourceOut])
def list_sources(
    project_id: int,
    _: AdminUser,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Source]:
    get_project(session, project_id)
    stmt = select(Source).where(Source.project_id == project_id).order_by(Source.id)
    return list(session.scalars(stmt.offset(offset).limit(limit)))


@router.get("/{project_id}/stats", response_model=ProjectStats)
def project_stats(project_id: int, _: AdminUser, session: SessionDep) -> ProjectStats:
    get_project(session, project_id)
    return compute_stats(session, project_id)


def _count_by(session: Session, column, *where) -> dict[str, int]:  # type: ignore[no-untyped-def]
    stmt = select(column, func.count()).where(*where).group_by(column)
    return {str(key): n for key, n in session.execute(stmt)}


def compute_stats(session: Session, project_id: int) -> ProjectStats:
    in_project = Task.project_id == project_id
    votes_by_outcome = _count_by(session, Vote.outcome, Vote.task_id == Task.id, in_project)
    per_user = session.execute(
        select(User.id, User.username, Vote.outcome, func.count())
        .join(Vote, Vote.user_id == User.id)
        .join(Task, Task.id == Vote.task_id)
        .where(in_project)
        .group_by(User.id, User.username, Vote.outcome)
    )
    annotators: dict[int, AnnotatorCount] = {}
    for user_id, username, outcome, n in per_user:
        entry = annotators.setdefault(
            user_id, AnnotatorCount(user_id=user_id, username=username, votes=0, skips=0)
        )
        if outcome == "skip":
            entry.skips += n
        else:
            entry.votes += n
    tasks_by_state = _count_by(session, Task.state, in_project)
    live_leases = session.scalar(
        select(func.count())
        .select_from(Lease)
        .join(Task, Task.id == Lease.task_id)
        .where(in_project, Lease.expires_at >= utcnow())
    )
    return ProjectStats(
        project_id=project_id,
        sources_by_state=_count_by(session, Source.state, Source.project_id == project_id),
        tasks_by_state=tasks_by_state,
        tasks_total=sum(tasks_by_state.values()),
        votes=sum(n for outcome, n in votes_by_outcome.items() if outcome != "skip"),
        skips=votes_by_outcome.get("skip", 0),
        votes_by_outcome=votes_by_outcome,
        live_leases=live_leases or 0,
        annotators=sorted(annotators.values(), key=lambda a: a.user_id),
        jobs_by_state=_count_by(session, Job.state, Job.project_id == project_id),
    )
