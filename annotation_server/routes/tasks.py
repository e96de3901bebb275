from datetime import UTC, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import Row, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_server.deps import CurrentUser, Principal, RuntimeDep, SessionDep, get_or_404
from annotation_server.routes.projects import get_project
from annotation_server.schemas import CandidateView, ProgressOut, SkipIn, TaskOut, VoteIn, VoteOut
from dspo import assign
from dspo.db import utcnow
from dspo.errors import DspoError
from dspo.models import Task, Vote

router = APIRouter(tags=["annotation"])

LABELS = "ABCDEFGHIJKLMNOP"


def task_view(task: assign.LeasedTask, user_id: int) -> TaskOut:
    base = f"/api/v1/images/tasks/{task.id}"
    order = assign.shown_order(task.id, user_id, task.candidate_ids)
    return TaskOut(
        id=task.id,
        project_id=task.project_id,
        source_id=task.source_id,
        instance_id=task.instance_id,
        kind=task.kind,  # type: ignore[arg-type]
        box=task.box,
        image_size=task.image_size,
        lq_url=f"{base}/lq",
        mask_url=None if task.instance_id is None else f"/api/v1/images/instances/{task.instance_id}/mask",
        candidates=[
            CandidateView(id=cid, label=LABELS[i], image_url=f"{base}/candidates/{cid}")
            for i, cid in enumerate(order)
        ],
        lease_expires_at=task.lease_expires_at,
        instructions=task.instructions,
    )


@router.post(
    "/projects/{project_id}/next",
    response_model=TaskOut,
    responses={204: {"description": "nothing left for you in this project"}},
)
def next_task(
    project_id: int,
    user: CurrentUser,
    session: SessionDep,
    runtime: RuntimeDep,
    position: Annotated[int, Query(ge=0, le=2)] = 0,
) -> TaskOut | Response:
    """Lease the next task that needs votes and that you have neither answered nor skipped. While you
    hold a lease you get the same task again. position=1 (2) gives, and leases, the task after that
    one (and the one after it), so that a client can preload them."""
    task = assign.next_task(
        session,
        project_id=project_id,
        user_id=user.id,
        now=utcnow(),
        lease_seconds=runtime.settings.lease_seconds,
        position=position,
    )
    if task is None:
        get_project(session, project_id)  # a 404 for a project that does not exist
    session.commit()
    if task is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return task_view(task, user.id)


def _submit(
    session: Session,
    task_id: int,
    user: Principal,
    data: assign.VoteInput,
    response: Response,
    replaces: str | None = None,
) -> Vote | Row[Any]:
    vote: Vote | Row[Any] | None
    created = True
    try:
        if replaces:
            vote, created = assign.replace_vote(
                session,
                task_id=task_id,
                user_id=user.id,
                replaces_submission_id=replaces,
                data=data,
                now=utcnow(),
            )
        else:
            vote = assign.submit_vote(session, task_id=task_id, user_id=user.id, data=data, now=utcnow())
        session.commit()
    except (DspoError, IntegrityError) as failure:
        # A replayed submission (a client retry, maybe racing its original) or a second answer to the
        # same task fails on the unique constraints of votes or on the slot check: say which, and
        # answer a replay with the vote it made. An undo refused for its own reasons (too late, filled
        # by others) is explained by a replay of itself only.
        session.rollback()
        replace_refused = replaces is not None and isinstance(failure, DspoError)
        explain = assign.find_replay if replace_refused else assign.earlier_answer
        try:
            vote, created = explain(session, task_id=task_id, user_id=user.id, data=data), False
        except DspoError as conflict:
            raise HTTPException(conflict.status_code, conflict.message) from None
        finally:
            session.commit()  # the lookup only read: end its transaction (on SQLite, the write lock)
        if vote is None:
            if isinstance(failure, DspoError):
                raise HTTPException(failure.status_code, failure.message) from None
            raise
    if not created:
        response.status_code = status.HTTP_200_OK
    return vote


@router.post("/tasks/{task_id}/vote", response_model=VoteOut, status_code=status.HTTP_201_CREATED)
def vote(
    task_id: int, body: VoteIn, user: CurrentUser, session: SessionDep, response: Response
) -> Vote | Row[Any]:
    """Answer a task: best and worst (pick), tie, all_bad or skip. 201 when recorded, 200 when this
    client_submission_id was recorded before (a safe retry), 409 for a different second answer. With
    replaces_submission_id it replaces your earlier answer (undo), which stays in the history."""
    data = assign.VoteInput(**body.model_dump(exclude={"replaces_submission_id"}))
    return _submit(session, task_id, user, data, response, body.replaces_submission_id)


@router.post("/tasks/{task_id}/skip", response_model=VoteOut, status_code=status.HTTP_201_CREATED)
def skip(
    task_id: int, body: SkipIn, user: CurrentUser, session: SessionDep, response: Response
) -> Vote | Row[Any]:
    """Skip a task: it is never offered to you again and does not count towards its votes."""
    data = assign.VoteInput(outcome="skip", client_submission_id=body.client_submission_id)
    return _submit(session, task_id, user, data, response)


@router.post("/tasks/{task_id}/release", status_code=status.HTTP_204_NO_CONTENT)
def release(task_id: int, user: CurrentUser, session: SessionDep) -> None:
    """Give back a leased task unanswered; it may be offered to you again later."""
    get_or_404(session, Task, task_id, "task")
    if not assign.release_task(session, task_id=task_id, user_id=user.id):
        raise HTTPException(status.HTTP_409_CONFLICT, f"you hold no lease on task {task_id}")
    session.commit()


@router.get("/tasks/{task_id}/votes", response_model=list[VoteOut])
def task_votes(task_id: int, user: CurrentUser, session: SessionDep) -> list[Vote]:
    """Admins see every vote on the task; annotators only their own."""
    get_or_404(session, Task, task_id, "task")
    stmt = select(Vote).where(Vote.task_id == task_id).order_by(Vote.id)
    if user.role != "admin":
        stmt = stmt.where(Vote.user_id == user.id)
    return list(session.scalars(stmt))


@router.get("/projects/{project_id}/progress", response_model=ProgressOut)
def progress(
    project_id: int,
    user: CurrentUser,
    session: SessionDep,
    since: Annotated[datetime | None, Query(description="start of 'today' (default: UTC midnight)")] = None,
) -> ProgressOut:
    """Your progress in a project, for the annotation page."""
    get_project(session, project_id)
    now = utcnow()
    if since is None:
        since = datetime.combine(now.date(), time(), tzinfo=UTC)
    elif since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    mine = (Vote.user_id == user.id, Vote.task_id == Task.id, Task.project_id == project_id)
    done_total = session.scalar(select(func.count()).select_from(Vote).where(*mine)) or 0
    done_today, mean_ms = session.execute(
        select(func.count(), func.avg(Vote.lead_time_ms)).where(*mine, Vote.created_at >= since)
    ).one()
    answered = exists().where(Vote.task_id == Task.id, Vote.user_id == user.id)
    left_for_you = session.scalar(
        select(func.count()).where(Task.project_id == project_id, Task.state == "open", ~answered)
    )
    votes_left = session.scalar(
        select(func.coalesce(func.sum(Task.required_votes - Task.vote_count), 0)).where(
            Task.project_id == project_id, Task.state == "open"
        )
    )
    return ProgressOut(
        done_today=done_today,
        done_total=done_total,
        left_for_you=left_for_you or 0,
        votes_left=votes_left or 0,
        ms_per_task=float(mean_ms) if mean_ms is not None else None,
    )
