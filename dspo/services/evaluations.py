"""Evaluation rounds (SPEC §1 step 8): blind A/B comparisons of two generators on the held-out sources.

A round names two sides, each a model version, the project's base generator (its generator without a
LoRA) or a generator by name with settings. A job (`evaluation_outputs`, worker.evaluation_jobs) makes
one output per held-out source with each side, with the same seed and settings, and `publish_outputs`
stores them as candidates of the source that belong to the round (`Candidate.evaluation_id`, at
negative positions, so that they never collide with the source's own candidates) and creates one task
of kind "evaluation" per source. `next` serves those tasks like any other; the annotator sees the two
outputs in an order shuffled for them (`assign.shown_order`, stored with the vote), so "left" is the
first candidate of the vote's `shown_order`. Evaluation answers never enter a dataset (dspo.aggregate,
dspo.datasets and dspo.retrain leave tasks with an evaluation_id out).

Closing a round fixes its numbers and records a `PromotionDecision`: with the project's auto_promote on,
B becomes the project's generator exactly when the Wilson 95% lower bound of B's win rate, ties counted
as halves, is above 0.5. A round closes when every task is complete (`close_finished`, on the
retraining tick) or when an admin closes it earlier."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from dspo import assign, jobs
from dspo.db import utcnow
from dspo.errors import Conflict, InvalidInput, NotFound
from dspo.evaluation_stats import EvalAnswer, summarise
from dspo.generators import generator_names
from dspo.models import (
    Candidate,
    Evaluation,
    Job,
    ModelVersion,
    Project,
    PromotionDecision,
    Source,
    Task,
    User,
    Vote,
)
from dspo.runtime import Runtime
from dspo.services.projects import get_project

OUTPUTS_JOB = "evaluation_outputs"
PROMOTION_THRESHOLD = 0.5
RULE = "B is promoted when the Wilson 95% lower bound of its win rate (ties as halves) is above 0.5"
SideName = Literal["a", "b"]


@dataclass(frozen=True)
class SideSpec:
    """What an admin names for a side: a model version, a generator by name (with settings), or neither
    for the project's base generator."""

    model_version_id: int | None = None
    generator: str | None = None
    generator_settings: dict[str, Any] | None = None


def output_position(evaluation_id: int, side: SideName) -> int:
    """Where a round's output sits among its source's candidates: below zero, where no ordinary
    candidate is, and distinct for every round and side."""
    return -(2 * evaluation_id + (0 if side == "a" else 1))


def _without_lora(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "lora"}


def project_generator(project: Project) -> dict[str, Any]:
    """The generator the project makes its candidates with now."""
    return {
        "generator": project.generator,
        "settings": dict(project.generator_settings),
        "model_version_id": project.model_version_id,
    }


def resolve_side(session: Session, project: Project, spec: SideSpec) -> dict[str, Any]:
    """The generator and settings a side stands for, fixed now so that the round is reproducible."""
    if spec.model_version_id is not None and spec.generator is not None:
        raise InvalidInput("a side names a model version or a generator, not both")
    if spec.model_version_id is not None:
        version = session.get(ModelVersion, spec.model_version_id)
        if version is None or version.project_id != project.id:
            raise InvalidInput(f"model version {spec.model_version_id} is not in project {project.id}")
        # As `model_versions.use` would set it: the project's diffusion settings with this LoRA.
        settings = _without_lora(project.generator_settings) if project.generator == "diffusion" else {}
        settings |= {"model": version.base_model, "backbone": version.backbone, "lora": version.lora_path}
        return {
            "label": f"model version {version.name}",
            "generator": "diffusion",
            "settings": settings,
            "model_version_id": version.id,
        }
    if spec.generator is not None:
        if spec.generator not in generator_names():
            known = ", ".join(generator_names())
            raise InvalidInput(f"unknown generator {spec.generator!r}; known: {known}")
        return {
            "label": spec.generator,
            "generator": spec.generator,
            "settings": dict(spec.generator_settings or {}),
            "model_version_id": None,
        }
    if spec.generator_settings is not None:
        raise InvalidInput("generator_settings need a generator")
    return {
        "label": f"base ({project.generator})",
        "generator": project.generator,
        "settings": _without_lora(project.generator_settings),
        "model_version_id": None,
    }


def held_out_sources(session: Session, project_id: int) -> list[Source]:
    stmt = select(Source).where(
        Source.project_id == project_id, Source.held_out.is_(True), Source.state == "ready"
    )
    return list(session.scalars(stmt.order_by(Source.id)))


def create_evaluation(
    session: Session,
    project_id: int,
    *,
    a: SideSpec,
    b: SideSpec,
    name: str = "",
    seed: int = 0,
    required_votes: int | None = None,
    trained_model_version_id: int | None = None,
) -> Evaluation:
    """A new round and its job (the caller commits, then dispatches `evaluation.job_id`)."""
    project = get_project(session, project_id)
    if not held_out_sources(session, project_id):
        raise InvalidInput(
            f"project {project_id} has no held-out source that is ready: upload images with held_out=true "
            "(or set held_out_fraction) and wait for their ingest jobs"
        )
    evaluation = Evaluation(
        project_id=project_id,
        name=name,
        a=resolve_side(session, project, a),
        b=resolve_side(session, project, b),
        seed=seed,
        required_votes=required_votes or project.overlap,
        state="generating",
        trained_model_version_id=trained_model_version_id,
    )
    session.add(evaluation)
    session.flush()
    job = Job(kind=OUTPUTS_JOB, payload={"evaluation_id": evaluation.id}, project_id=project_id)
    session.add(job)
    session.flush()
    evaluation.job_id = job.id
    return evaluation


def start(session: Session, runtime: Runtime, project_id: int, **fields: Any) -> Evaluation:
    """Create a round (fields as for `create_evaluation`), commit it and dispatch its job."""
    evaluation = create_evaluation(session, project_id, **fields)
    session.commit()
    assert evaluation.job_id is not None
    jobs.dispatch(runtime, evaluation.job_id)
    return evaluation


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} does not exist")
    return evaluation


def list_evaluations(session: Session, project_id: int) -> list[Evaluation]:
    get_project(session, project_id)
    stmt = select(Evaluation).where(Evaluation.project_id == project_id).order_by(Evaluation.id)
    return list(session.scalars(stmt))


@dataclass(frozen=True)
class Output:
    """One generated output of a side on a source, its image already in the blob store."""

    source_id: int
    side: SideName
    sha256: str
    width: int
    height: int
    generator: str
    model: str
    weights_digest: str | None
    settings: dict[str, Any]
    seed: int


def publish_outputs(session: Session, evaluation_id: int, outputs: list[Output]) -> int:
    """Store a round's outputs and create its tasks, all at once (a job that ran before and failed
    leaves nothing behind that this does not replace); returns the number of tasks."""
    evaluation = get_evaluation(session, evaluation_id)
    if evaluation.state != "generating":
        raise Conflict(f"evaluation {evaluation_id} is {evaluation.state}: its outputs are published")
    # Task ids must become visible in increasing order for the annotators' cursors (dspo.assign).
    assign.lock_new_task_ids(session, evaluation.project_id)
    session.execute(Task.__table__.delete().where(Task.evaluation_id == evaluation_id))
    session.execute(Candidate.__table__.delete().where(Candidate.evaluation_id == evaluation_id))
    by_source: dict[int, list[Output]] = {}
    for output in outputs:
        by_source.setdefault(output.source_id, []).append(output)
    for source_id, pair in sorted(by_source.items()):
        if sorted(o.side for o in pair) != ["a", "b"]:
            raise ValueError(
                f"source {source_id} needs one output of each side, got {[o.side for o in pair]}"
            )
        # Candidate ids must not tell the sides apart: which side is stored first is drawn per source.
        if random.Random(f"{evaluation_id}:{source_id}").random() < 0.5:
            pair.reverse()
        for output in pair:
            session.add(
                Candidate(
                    source_id=source_id,
                    position=output_position(evaluation_id, output.side),
                    sha256=output.sha256,
                    width=output.width,
                    height=output.height,
                    generator=output.generator,
                    model=output.model,
                    weights_digest=output.weights_digest,
                    settings=output.settings,
                    seed=output.seed,
                    evaluation_id=evaluation_id,
                )
            )
            session.flush()
        session.add(
            Task(
                project_id=evaluation.project_id,
                source_id=source_id,
                instance_id=None,
                kind="evaluation",
                evaluation_id=evaluation_id,
                required_votes=evaluation.required_votes,
            )
        )
    evaluation.state = "open"
    session.flush()
    return len(by_source)


def mark_failed(session: Session, evaluation_id: int, error: str) -> None:
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.state == "generating")
        .values(state="failed", error=error)
    )


# --- Answers and results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerRow:
    """One vote on a round's task, in the round's terms."""

    vote_id: int
    task_id: int
    source_id: int
    annotator: str
    left_candidate_id: int
    right_candidate_id: int
    a_candidate_id: int
    b_candidate_id: int
    b_side: Literal["left", "right"]
    answer: Literal["left", "right", "tie", "skip"]
    outcome: Literal["b", "a", "tie"] | None  # None for a skip
    lead_time_ms: int | None
    created_at: datetime


def _answer(outcome: str, best: int | None, left: int) -> Literal["left", "right", "tie", "skip"]:
    if outcome == "skip":
        return "skip"
    if outcome == "pick":
        return "left" if best == left else "right"
    return "tie"  # "no difference"; an all_bad answer says the same about the two


def answers(session: Session, evaluation_id: int) -> list[AnswerRow]:
    get_evaluation(session, evaluation_id)
    sides: dict[int, dict[str, int]] = {}
    for cid, source_id, position in session.execute(
        select(Candidate.id, Candidate.source_id, Candidate.position).where(
            Candidate.evaluation_id == evaluation_id
        )
    ):
        side = "a" if position == output_position(evaluation_id, "a") else "b"
        sides.setdefault(source_id, {})[side] = cid
    rows = session.execute(
        select(Vote, Task.source_id, User.username)
        .join(Task, Task.id == Vote.task_id)
        .join(User, User.id == Vote.user_id)
        .where(Task.evaluation_id == evaluation_id)
        .order_by(Vote.id)
    ).all()
    found = []
    for vote, source_id, username in rows:
        left, right = vote.shown_order
        answer = _answer(vote.outcome, vote.best_candidate_id, left)
        b_side: Literal["left", "right"] = "left" if left == sides[source_id]["b"] else "right"
        outcome = None if answer == "skip" else EvalAnswer(username, source_id, b_side, answer).outcome
        found.append(
            AnswerRow(
                vote_id=vote.id,
                task_id=vote.task_id,
                source_id=source_id,
                annotator=username,
                left_candidate_id=left,
                right_candidate_id=right,
                a_candidate_id=sides[source_id]["a"],
                b_candidate_id=sides[source_id]["b"],
                b_side=b_side,
                answer=answer,
                outcome=outcome,
                lead_time_ms=vote.lead_time_ms,
                created_at=vote.created_at,
            )
        )
    return found


def summary(rows: list[AnswerRow]) -> dict[str, Any]:
    """Every statistic of dspo.evaluation_stats over the answers (per annotator by name, per source by
    id)."""
    counted = [
        EvalAnswer(r.annotator, r.source_id, r.b_side, r.answer)  # type: ignore[arg-type]
        for r in rows
        if r.answer != "skip"
    ]
    return summarise(counted, skips=len(rows) - len(counted)).to_dict()


def task_counts(session: Session, evaluation_id: int) -> tuple[int, int]:
    """(tasks, complete tasks) of a round."""
    complete = func.coalesce(func.sum(case((Task.state == "complete", 1), else_=0)), 0)
    total, done = session.execute(
        select(func.count(), complete).where(Task.evaluation_id == evaluation_id)
    ).one()
    return int(total), int(done)


@dataclass(frozen=True)
class Result:
    evaluation: Evaluation
    tasks: int
    tasks_complete: int
    summary: dict[str, Any]
    decision: PromotionDecision | None


def result(session: Session, evaluation_id: int) -> Result:
    evaluation = get_evaluation(session, evaluation_id)
    total, complete = task_counts(session, evaluation_id)
    decision = session.scalars(
        select(PromotionDecision).where(PromotionDecision.evaluation_id == evaluation_id)
    ).first()
    return Result(evaluation, total, complete, summary(answers(session, evaluation_id)), decision)


CSV_FIELDS = [f for f in AnswerRow.__dataclass_fields__]


def answers_csv(rows: list[AnswerRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record = asdict(row)
        record["created_at"] = row.created_at.isoformat()
        writer.writerow(record)
    return out.getvalue()


# --- Closing and promotion ----------------------------------------------------------------------------


def close(session: Session, evaluation_id: int, now: datetime | None = None) -> PromotionDecision:
    """Close an open round and commit (idempotent: a closed round returns its decision): its open
    tasks are served no more (their k becomes the answers they have), its numbers are fixed in a
    PromotionDecision, and B is promoted if the project says so and the rule holds."""
    evaluation = session.scalars(
        select(Evaluation).where(Evaluation.id == evaluation_id).with_for_update()
    ).first()
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} does not exist")
    if evaluation.state == "closed":
        decision = session.scalars(
            select(PromotionDecision).where(PromotionDecision.evaluation_id == evaluation_id)
        ).one()
        return decision
    if evaluation.state != "open":
        raise Conflict(f"evaluation {evaluation_id} is {evaluation.state}: only an open round can be closed")
    session.execute(
        update(Task)
        .where(Task.evaluation_id == evaluation_id, Task.state == "open")
        .values(required_votes=Task.vote_count, state="complete")
    )
    numbers = summary(answers(session, evaluation_id))["overall"]
    project = session.get(Project, evaluation.project_id)
    assert project is not None
    lower, upper = numbers["ties_as_halves_interval"]
    before = project_generator(project)
    after = None
    if not project.auto_promote:
        decision, reason = "off", "the project's auto_promote is off: B was not promoted"
    elif lower > PROMOTION_THRESHOLD:
        decision, reason = "promoted", f"lower bound {lower:.4f} > {PROMOTION_THRESHOLD}: {RULE}"
        after = _promote(session, project, evaluation.b)
    else:
        decision, reason = "kept", f"lower bound {lower:.4f} <= {PROMOTION_THRESHOLD}: {RULE}"
    record = PromotionDecision(
        project_id=project.id,
        evaluation_id=evaluation_id,
        decision=decision,
        reason=reason,
        answers=numbers["answers"],
        wins_b=numbers["wins_b"],
        wins_a=numbers["wins_a"],
        ties=numbers["ties"],
        win_rate=numbers["win_rate_ties_as_halves"],
        lower_bound=lower,
        upper_bound=upper,
        sign_test_p=numbers["sign_test_p"],
        before=before,
        after=after,
        created_at=now or utcnow(),
    )
    session.add(record)
    evaluation.state, evaluation.closed_at = "closed", now or utcnow()
    session.commit()
    return record


def _promote(session: Session, project: Project, side: dict[str, Any]) -> dict[str, Any]:
    """Make the project generate with side B (as `model_versions.use` does for a model version)."""
    if side["model_version_id"] is not None and session.get(ModelVersion, side["model_version_id"]) is None:
        raise Conflict(f"model version {side['model_version_id']} of side B was deleted: nothing to promote")
    project.generator = side["generator"]
    project.generator_settings = dict(side["settings"])
    project.model_version_id = side["model_version_id"]
    return project_generator(project)


def finished_rounds(session: Session) -> list[int]:
    """Open rounds whose every task is complete."""
    unfinished = select(Task.evaluation_id).where(Task.evaluation_id.is_not(None), Task.state == "open")
    stmt = select(Evaluation.id).where(Evaluation.state == "open", Evaluation.id.not_in(unfinished))
    return list(session.scalars(stmt.order_by(Evaluation.id)))


def close_finished(runtime: Runtime) -> list[int]:
    """Close every open round whose tasks are all complete (the retraining tick calls this); returns
    their ids. Closing twice is harmless, so concurrent ticks need no coordination."""
    with runtime.sessions() as session:
        found = finished_rounds(session)
    for evaluation_id in found:
        with runtime.sessions() as session:
            close(session, evaluation_id)
    return found


def evaluate_trained(runtime: Runtime, model_version_id: int) -> tuple[int | None, str]:
    """Scheduled retraining's evaluation step: if the project wants it (retrain_evaluate), a round of
    the new model version (B) against the project's generator now (A), on the held-out sources.
    Returns the round's id (None when there is none) and what was done and why, for the job's result.
    A training job that runs again finds its round and starts no second one."""
    with runtime.sessions() as session:
        version = session.get(ModelVersion, model_version_id)
        if version is None:
            raise NotFound(f"model version {model_version_id} does not exist")
        project = get_project(session, version.project_id)
        existing = session.scalar(
            select(Evaluation.id).where(Evaluation.trained_model_version_id == model_version_id)
        )
        if existing is not None:
            return existing, f"evaluation round {existing} was started by an earlier run of this job"
        if not project.retrain_evaluate:
            return None, "not evaluated: the project's retrain_evaluate is off"
        if not held_out_sources(session, project.id):
            return None, "not evaluated: the project has no held-out sources ready (upload some held out)"
        evaluation = start(
            session,
            runtime,
            project.id,
            a=SideSpec(model_version_id=project.model_version_id),
            b=SideSpec(model_version_id=model_version_id),
            name=f"retraining: {version.name} against the project's generator",
            trained_model_version_id=model_version_id,
        )
        return evaluation.id, f"evaluation round {evaluation.id} started against the project's generator"


def decisions(session: Session, project_id: int) -> list[PromotionDecision]:
    get_project(session, project_id)
    stmt = select(PromotionDecision).where(PromotionDecision.project_id == project_id)
    return list(session.scalars(stmt.order_by(PromotionDecision.id)))
