"""Review of disputed tasks over REST: annotators flag a task; reviewers (and admins) of its project
read the queue of disputed tasks, every answer of one, and record their decision."""

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from annotation_server.deps import CurrentUser, ReadSession, WriteSession
from annotation_server.schemas import (
    BigIdPath,
    FlagIn,
    FlagOut,
    Fraction,
    IdPath,
    QueueItemOut,
    ReviewIn,
    ReviewOut,
    ReviewTaskOut,
    errors,
)
from annotation_server.task_views import viewer_fields
from dspo.models import TaskFlag
from dspo.services import reviews

router = APIRouter(tags=["review"], responses=errors(401, 404, 422))
MinAgreement = Annotated[
    Fraction, Query(description="a task whose winner's or loser's share is under this is disputed")
]


@router.post(
    "/tasks/{task_id}/flag",
    response_model=FlagOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": FlagOut, "description": "flagged by you before: the reason is replaced"}}
    | errors(400, 409, 413),
)
def flag(
    task_id: BigIdPath, body: FlagIn, user: CurrentUser, session: WriteSession, response: Response
) -> TaskFlag:
    """Ask a reviewer to look at this task, saying why. Any member of the task's project may."""
    recorded, created = reviews.flag_task(session, user, task_id, body.reason)
    if not created:
        response.status_code = status.HTTP_200_OK
    return recorded


@router.get("/projects/{project_id}/reviews/queue", response_model=list[QueueItemOut], responses=errors(403))
def review_queue(
    project_id: IdPath, user: CurrentUser, session: ReadSession, min_agreement: MinAgreement = 0.5
) -> list[reviews.QueueItem]:
    """The project's disputed tasks (answers that disagree, by the drop reasons of aggregation, or
    flagged by an annotator), those not reviewed yet first. For admins and the project's reviewers."""
    return reviews.queue(session, user, project_id, min_agreement)


@router.get("/tasks/{task_id}/review", response_model=ReviewTaskOut, responses=errors(403, 409))
def task_for_review(
    task_id: BigIdPath, user: CurrentUser, session: ReadSession, min_agreement: MinAgreement = 0.5
) -> ReviewTaskOut:
    """Everything a reviewer decides on: the task, every answer with who gave it, flags and reviews."""
    task = reviews.task_for_review(session, user, task_id, min_agreement)
    return ReviewTaskOut(
        **viewer_fields(task, task.candidate_ids),
        answers=task.answers,
        flags=task.flags,
        reviews=task.reviews,
        contested=task.contested,
    )


@router.post(
    "/tasks/{task_id}/review",
    response_model=ReviewOut,
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, 403, 409, 413),
)
def review(
    task_id: BigIdPath, body: ReviewIn, user: CurrentUser, session: WriteSession
) -> reviews.ReviewEntry:
    """Decide the task: the winner and loser its dataset record gets, whatever the votes say, or
    no_pair for no record. A later review of the task replaces this one; both stay in its history."""
    return reviews.record_review(session, user, task_id, **body.model_dump())
