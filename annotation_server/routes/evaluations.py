"""Evaluation rounds over REST (admins only): start a blind A/B round on the held-out sources (a job),
read its results, download its answers, close it (which decides on promotion), and the project's
promotion decisions."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from annotation_server.deps import AdminUser, ReadSession, RuntimeDep, WriteSession
from annotation_server.schemas import (
    EvaluationAnswerOut,
    EvaluationIn,
    EvaluationOut,
    EvaluationResultOut,
    IdPath,
    PromotionDecisionOut,
    errors,
)
from dspo.models import Evaluation, PromotionDecision
from dspo.services import evaluations
from dspo.services.evaluations import SideSpec

router = APIRouter(tags=["evaluations"], responses=errors(401, 403, 404, 422))


@router.post(
    "/projects/{project_id}/evaluations",
    response_model=EvaluationOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(400, 413),
)
def start_evaluation(
    project_id: IdPath, body: EvaluationIn, _: AdminUser, session: WriteSession, runtime: RuntimeDep
) -> Evaluation:
    """Start a blind A/B round on the project's held-out sources: a job (follow it at /jobs/{job_id})
    makes one output per source with A and with B (same seed and settings), then one task of kind
    "evaluation" per source, which annotators get from `next` like any other task."""
    return evaluations.start(
        session,
        runtime,
        project_id,
        a=SideSpec(**body.a.model_dump()),
        b=SideSpec(**body.b.model_dump()),
        name=body.name,
        seed=body.seed,
        required_votes=body.required_votes,
    )


@router.get("/projects/{project_id}/evaluations", response_model=list[EvaluationOut])
def list_evaluations(project_id: IdPath, _: AdminUser, session: ReadSession) -> list[Evaluation]:
    return evaluations.list_evaluations(session, project_id)


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationResultOut)
def read_evaluation(evaluation_id: IdPath, _: AdminUser, session: ReadSession) -> evaluations.Result:
    """The round and its results so far: B's win rate over A (ties apart and as halves) with Wilson 95%
    intervals and the sign test, per annotator and per source, the share of "left" answers, agreement;
    and, once closed, the promotion decision with its numbers."""
    return evaluations.result(session, evaluation_id)


@router.get(
    "/evaluations/{evaluation_id}/answers",
    response_model=list[EvaluationAnswerOut],
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "the answers"}},
)
def evaluation_answers(
    evaluation_id: IdPath,
    _: AdminUser,
    session: ReadSession,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> list[evaluations.AnswerRow] | Response:
    """Every answer of the round (skips included) with the side B was shown on; format=csv for a file."""
    rows = evaluations.answers(session, evaluation_id)
    if format == "json":
        return rows
    headers = {"Content-Disposition": f'attachment; filename="evaluation-{evaluation_id}.csv"'}
    return Response(evaluations.answers_csv(rows), media_type="text/csv", headers=headers)


@router.post("/evaluations/{evaluation_id}/close", response_model=PromotionDecisionOut, responses=errors(409))
def close_evaluation(evaluation_id: IdPath, _: AdminUser, session: WriteSession) -> PromotionDecision:
    """Close an open round now (rounds whose tasks are all complete close on the retraining tick): its
    remaining tasks are served no more, and its numbers decide on promotion (the project's auto_promote).
    Closing a closed round returns its decision."""
    return evaluations.close(session, evaluation_id)


@router.get("/projects/{project_id}/promotion-decisions", response_model=list[PromotionDecisionOut])
def promotion_decisions(project_id: IdPath, _: AdminUser, session: ReadSession) -> list[PromotionDecision]:
    """Every decision on promotion that a closed round made, with its numbers, oldest first."""
    return evaluations.decisions(session, project_id)
