"""Gold tasks over REST: mark an answered task as gold (admins and the project's reviewers), make a
project's sanity tasks (a job), read per-annotator gold accuracy, and resume a paused annotator."""

from fastapi import APIRouter, status

from annotation_server.deps import AdminUser, CurrentUser, ReadSession, RuntimeDep, WriteSession
from annotation_server.schemas import (
    BigIdPath,
    GoldOut,
    GoldScoreOut,
    GoldTaskOut,
    IdPath,
    JobOut,
    SanityRequest,
    errors,
)
from dspo.models import Job, Task
from dspo.services import gold

router = APIRouter(tags=["gold"], responses=errors(401, 403, 404, 422))


@router.post("/tasks/{task_id}/gold", response_model=GoldTaskOut, responses=errors(409))
def mark_gold(task_id: BigIdPath, user: CurrentUser, session: WriteSession) -> Task:
    """Make a task you answered with a pick a gold task: your best and worst become its known answer.
    It leaves the normal queue (never complete, never in a dataset) and is served to annotators at the
    project's gold_rate. Admins and reviewers of the project only."""
    return gold.mark_gold(session, user, task_id)


@router.post(
    "/projects/{project_id}/sanity-tasks",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(400, 413),
)
def make_sanity_tasks(
    project_id: IdPath, body: SanityRequest, _: AdminUser, session: WriteSession, runtime: RuntimeDep
) -> Job:
    """Queue the job that makes sanity gold tasks until the project has `count` (default: its
    sanity_tasks setting): each copies one instance with one candidate degraded inside the mask."""
    return gold.start_sanity_job(session, runtime, project_id, body.count)


@router.get("/projects/{project_id}/gold", response_model=GoldOut)
def gold_scores(project_id: IdPath, _: AdminUser, session: ReadSession) -> GoldOut:
    """Per annotator: gold answers, correct ones, accuracy (all answers), and whether paused."""
    paused = {s.user_id for s in gold.paused(session, project_id)}
    return GoldOut(
        gold_tasks=gold.count_gold_tasks(session, project_id),
        scores=[
            GoldScoreOut(**vars(s), accuracy=s.accuracy, paused=s.user_id in paused)
            for s in gold.scores(session, project_id)
        ],
    )


@router.post("/projects/{project_id}/gold/resume/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def resume(project_id: IdPath, user_id: IdPath, admin: AdminUser, session: WriteSession) -> None:
    """Resume an annotator paused by their gold accuracy: only gold answers from now on count."""
    gold.resume(session, project_id, user_id, by=admin.id)
