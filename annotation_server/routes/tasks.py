from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import Row

from annotation_server.deps import CurrentUser, ReadSession, RuntimeDep, WriteSession
from annotation_server.schemas import (
    BigIdPath,
    IdPath,
    ProgressOut,
    SkipIn,
    TaskOut,
    UTCDatetime,
    VoteIn,
    VoteOut,
    errors,
)
from annotation_server.task_views import viewer_fields
from dspo import assign
from dspo.models import Vote
from dspo.services import members, stats, votes

router = APIRouter(tags=["annotation"])


def task_view(task: assign.LeasedTask, user_id: int) -> TaskOut:
    order = assign.shown_order(task.id, user_id, task.candidate_ids)
    return TaskOut(**viewer_fields(task, order), lease_expires_at=task.lease_expires_at)


@router.post(
    "/projects/{project_id}/next",
    response_model=TaskOut,
    responses={204: {"description": "nothing left for you in this project"}, **errors(401, 403, 404, 422)},
)
def next_task(
    project_id: IdPath,
    user: CurrentUser,
    session: WriteSession,
    runtime: RuntimeDep,
    position: Annotated[int, Query(ge=0, le=2)] = 0,
) -> TaskOut | Response:
    """Lease the next task that needs votes and that you have neither answered nor skipped. While you
    hold a lease you get the same task again. position=1 (2) gives, and leases, the task after that
    one (and the one after it), so that a client can preload them."""
    task = votes.lease_next(
        session,
        project_id=project_id,
        user=user,
        lease_seconds=runtime.settings.lease_seconds,
        position=position,
    )
    if task is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return task_view(task, user.id)


def _answer(vote: Vote | Row[Any], created: bool, response: Response) -> Vote | Row[Any]:
    if not created:
        response.status_code = status.HTTP_200_OK
    return vote


@router.post(
    "/tasks/{task_id}/vote",
    response_model=VoteOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": VoteOut, "description": "a retry: the vote it recorded before"}}
    | errors(401, 403, 404, 409, 400, 413, 422),
)
def vote(
    task_id: BigIdPath, body: VoteIn, user: CurrentUser, session: WriteSession, response: Response
) -> Vote | Row[Any]:
    """Answer a task: best and worst (pick), tie, all_bad or skip. 201 when recorded, 200 when this
    client_submission_id was recorded before (a safe retry), 409 for a different second answer. With
    replaces_submission_id it replaces your earlier answer (undo), which stays in the history."""
    data = assign.VoteInput(**body.model_dump(exclude={"replaces_submission_id"}))
    recorded, created = votes.record_vote(
        session,
        task_id=task_id,
        user=user,
        data=data,
        replaces_submission_id=body.replaces_submission_id,
    )
    return _answer(recorded, created, response)


@router.post(
    "/tasks/{task_id}/skip",
    response_model=VoteOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": VoteOut, "description": "a retry: the skip it recorded before"}}
    | errors(401, 403, 404, 409, 400, 413, 422),
)
def skip(
    task_id: BigIdPath, body: SkipIn, user: CurrentUser, session: WriteSession, response: Response
) -> Vote | Row[Any]:
    """Skip a task: it is never offered to you again and does not count towards its votes."""
    data = assign.VoteInput(outcome="skip", client_submission_id=body.client_submission_id)
    recorded, created = votes.record_vote(session, task_id=task_id, user=user, data=data)
    return _answer(recorded, created, response)


@router.post(
    "/tasks/{task_id}/release",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401, 403, 404, 409, 422),
)
def release(task_id: BigIdPath, user: CurrentUser, session: WriteSession) -> None:
    """Give back a leased task unanswered; it may be offered to you again later."""
    votes.release(session, task_id=task_id, user=user)


@router.get("/tasks/{task_id}/votes", response_model=list[VoteOut], responses=errors(401, 404, 422))
def task_votes(task_id: BigIdPath, user: CurrentUser, session: ReadSession) -> list[Vote]:
    """Admins, and reviewers of the task's project, see every vote on the task; annotators only
    their own."""
    return votes.task_votes(session, task_id, user=user)


@router.get("/projects/{project_id}/progress", response_model=ProgressOut, responses=errors(401, 404, 422))
def progress(
    project_id: IdPath,
    user: CurrentUser,
    session: ReadSession,
    since: Annotated[
        UTCDatetime | None, Query(description="start of 'today' (default: UTC midnight)")
    ] = None,
) -> stats.Progress:
    """Your progress in a project, for the annotation page."""
    members.require_project(session, user, project_id)
    return stats.annotator_progress(session, project_id, user.id, since)
