"""Gold tasks: tasks whose answer is known, served now and then to check how carefully annotators
answer (docs/decisions.md, "Gold tasks").

Two sources: a task an admin or reviewer answered with a pick and then marked as gold (its answer is
their best and worst), and sanity tasks (`sanity_tasks`, made by the job of the same name in
worker.gold_jobs): a hidden copy of a source (state "sanity") with the same LQ image, a copy of one
instance and its own N candidates, one of them degraded on purpose inside the mask, so that its worst
is known. A gold task has state "gold": it is never open (the cursor scan of dspo.assign never sees
it) and never complete, `next` serves it at the project's gold_rate, every annotator answers it at
most once, and dspo.aggregate leaves it out of every dataset.

Scoring: an answer is correct when it is a pick whose worst (and, for a marked task, whose best)
is the known one; ties and "all bad" are wrong, skips do not count, nor does the marker's own answer.
An annotator with at least gold_min_answers scored answers since their last resume and an accuracy
under gold_threshold is paused in the project until an admin resumes them."""

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, and_, case, cast, func, or_, select
from sqlalchemy.orm import Session

from dspo import assign, jobs
from dspo.db import utcnow
from dspo.errors import Conflict, Forbidden, InvalidInput, NotFound
from dspo.models import Candidate, GoldResume, Instance, Job, Project, Source, Task, User, Vote
from dspo.runtime import Runtime
from dspo.services import members
from dspo.services.projects import get_project
from dspo.services.tokens import Principal

SANITY_JOB = "sanity_tasks"


# --- Marking a task as gold ----------------------------------------------------------------------------


def mark_gold(session: Session, user: Principal, task_id: int) -> Task:
    """Make a task gold with the caller's own pick on it as the known answer. Admins, and reviewers of
    the task's project, may; annotators get Forbidden, outsiders NotFound."""
    members.require_task(session, user, task_id)
    if not members.sees_every_answer(user):
        raise Forbidden("only an admin or a reviewer of the project can mark a task as gold")
    task = session.get(Task, task_id, with_for_update=True)
    assert task is not None
    if task.state == "gold":
        raise Conflict(f"task {task_id} is a gold task already")
    if task.evaluation_id is not None:
        raise Conflict(f"task {task_id} belongs to an evaluation round: it cannot be gold")
    vote = session.scalars(select(Vote).where(Vote.task_id == task_id, Vote.user_id == user.id)).first()
    if vote is None or vote.outcome != "pick":
        raise InvalidInput(
            f"answer task {task_id} with a best and a worst first: your answer becomes its gold answer"
        )
    # Open or complete before, gold from now on: no cursor invariant to keep (it covers open tasks).
    task.state = "gold"
    task.gold_best_candidate_id = vote.best_candidate_id
    task.gold_worst_candidate_id = vote.worst_candidate_id
    task.gold_by = user.id
    session.commit()
    return task


def task_project(session: Session, task_id: int) -> int | None:
    return session.scalar(select(Task.project_id).where(Task.id == task_id))


def count_gold_tasks(session: Session, project_id: int) -> int:
    get_project(session, project_id)
    return (
        session.scalar(
            select(func.count()).select_from(Task).where(Task.project_id == project_id, Task.state == "gold")
        )
        or 0
    )


# --- Scoring ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldScore:
    user_id: int
    username: str
    answered: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


def _correct() -> object:
    right = and_(
        Vote.outcome == "pick",
        Vote.worst_candidate_id == Task.gold_worst_candidate_id,
        or_(Task.gold_best_candidate_id.is_(None), Vote.best_candidate_id == Task.gold_best_candidate_id),
    )
    return func.sum(case((right, 1), else_=0))


def scores(
    session: Session, project_id: int, *, since_resume: bool = False, user_id: int | None = None
) -> list[GoldScore]:
    """Per annotator with scored gold answers in the project: answered, correct (and accuracy), by
    user name. since_resume: only answers given after the annotator's last resume (what pauses)."""
    stmt = (
        select(Vote.user_id, User.username, func.count(), cast(_correct(), Integer))
        .join(Task, Task.id == Vote.task_id)
        .join(User, User.id == Vote.user_id)
        .where(
            Task.project_id == project_id,
            Task.state == "gold",
            Vote.outcome != "skip",
            or_(Task.gold_by.is_(None), Vote.user_id != Task.gold_by),
        )
        .group_by(Vote.user_id, User.username)
        .order_by(User.username)
    )
    if user_id is not None:
        stmt = stmt.where(Vote.user_id == user_id)
    if since_resume:
        stmt = stmt.outerjoin(
            GoldResume, and_(GoldResume.project_id == project_id, GoldResume.user_id == Vote.user_id)
        ).where(or_(GoldResume.resumed_at.is_(None), Vote.created_at > GoldResume.resumed_at))
    return [GoldScore(*row) for row in session.execute(stmt)]


def is_paused(project: Project, score: GoldScore) -> bool:
    if project.gold_threshold is None or score.answered < max(project.gold_min_answers, 1):
        return False
    return score.correct / score.answered < project.gold_threshold


def paused(session: Session, project_id: int) -> list[GoldScore]:
    """The annotators paused in the project, with the numbers that paused them."""
    project = get_project(session, project_id)
    if project.gold_threshold is None:
        return []
    return [s for s in scores(session, project_id, since_resume=True) if is_paused(project, s)]


def pause_message(project: Project, score: GoldScore) -> str:
    assert project.gold_threshold is not None
    return (
        f"Your work in this project is paused: your accuracy on check tasks is "
        f"{score.correct / score.answered:.0%} ({score.correct} of {score.answered}), under the "
        f"project's threshold of {project.gold_threshold:.0%}. Ask your project lead to look at your "
        "answers with you and resume you."
    )


def pause_of(session: Session, project: Project, user_id: int) -> str | None:
    """The message that stops the annotator in this project, or None if they are not paused."""
    if project.gold_threshold is None:
        return None
    found = scores(session, project.id, since_resume=True, user_id=user_id)
    return pause_message(project, found[0]) if found and is_paused(project, found[0]) else None


def require_not_paused(session: Session, project: Project, user_id: int) -> None:
    message = pause_of(session, project, user_id)
    if message is not None:
        raise Forbidden(message)


def resume(session: Session, project_id: int, user_id: int, *, by: int, now: datetime | None = None) -> None:
    """Resume an annotator: gold answers they gave until now no longer count towards a pause."""
    get_project(session, project_id)
    if session.get(User, user_id) is None:
        raise NotFound(f"user {user_id} does not exist")
    row = session.get(GoldResume, (project_id, user_id))
    if row is None:
        row = GoldResume(project_id=project_id, user_id=user_id)
        session.add(row)
    row.resumed_at, row.resumed_by = now or utcnow(), by
    session.commit()


# --- Sanity tasks -------------------------------------------------------------------------------------


def start_sanity_job(session: Session, runtime: Runtime, project_id: int, count: int | None = None) -> Job:
    """Queue the job that makes sanity tasks until the project has `count` (default: its
    sanity_tasks setting); commits and dispatches it."""
    project = get_project(session, project_id)
    wanted = project.sanity_tasks if count is None else count
    job = Job(kind=SANITY_JOB, payload={"project_id": project_id, "count": wanted}, project_id=project_id)
    session.add(job)
    session.commit()
    jobs.dispatch(runtime, job.id)
    return job


@dataclass(frozen=True)
class SanityPlan:
    """One sanity task to make: the instance it copies, the candidates of its source by position, and
    which position is degraded (with the seed of the degradation)."""

    instance_id: int
    candidate_shas: list[str]
    degraded_position: int
    seed: int
    mask_sha256: str


def _copy_key(instance_id: int) -> str:
    # The copy's upload_sha256: unique per copied instance, so no instance is copied twice, even by
    # two jobs at once (the unique constraint on (project, upload_sha256)).
    return hashlib.sha256(f"sanity:{instance_id}".encode()).hexdigest()


def plan_sanity(session: Session, project_id: int, count: int, seed: int = 0) -> list[SanityPlan]:
    """Which instances get a sanity task, to bring the project to `count` of them: drawn, seeded,
    among the instances of its ready, not held-out sources that have a task and no copy yet."""
    project = get_project(session, project_id)
    existing = session.scalars(
        select(Source.upload_sha256).where(Source.project_id == project_id, Source.state == "sanity")
    ).all()
    wanted = count - len(existing)
    if wanted <= 0:
        return []
    copied = set(existing)
    eligible = [
        row
        for row in session.execute(
            select(Instance.id, Instance.source_id, Instance.mask_sha256)
            .join(Source, Source.id == Instance.source_id)
            .join(Task, Task.instance_id == Instance.id)
            .where(Source.project_id == project_id, Source.state == "ready", Source.held_out.is_(False))
            .order_by(Instance.id)
        )
        if _copy_key(row.id) not in copied
    ]
    chosen = random.Random(f"{project_id}:{seed}:{len(existing)}").sample(
        eligible, min(wanted, len(eligible))
    )
    plans = []
    for row in sorted(chosen):
        shas = session.scalars(
            select(Candidate.sha256)
            .where(
                Candidate.source_id == row.source_id,
                Candidate.evaluation_id.is_(None),
                Candidate.position >= 0,
            )
            .order_by(Candidate.position)
        ).all()
        if len(shas) != project.n_candidates:
            continue
        draw = random.Random(f"sanity:{row.id}")
        plans.append(
            SanityPlan(row.id, list(shas), draw.randrange(len(shas)), draw.getrandbits(32), row.mask_sha256)
        )
    return plans


def sanity_count(session: Session, project_id: int) -> int:
    stmt = (
        select(func.count())
        .select_from(Source)
        .where(Source.project_id == project_id, Source.state == "sanity")
    )
    return session.scalar(stmt) or 0


def publish_sanity(
    session: Session, plan: SanityPlan, degraded_sha256: str, params: dict[str, object], count: int
) -> Task | None:
    """Make the hidden copy of the plan's source and instance, its candidates (the degraded one at
    the plan's position) and its gold task, whose known worst is the degraded candidate; None when
    the project has `count` sanity tasks already (another job made them). The caller commits."""
    instance = session.get(Instance, plan.instance_id)
    if instance is None:
        raise NotFound(f"instance {plan.instance_id} is gone")
    source = session.get(Source, instance.source_id)
    assert source is not None
    project = get_project(session, source.project_id)
    # Jobs that add tasks to the project take turns here, so they cannot overshoot `count` together.
    assign.lock_new_task_ids(session, project.id)
    if sanity_count(session, project.id) >= count:
        return None
    originals = {
        c.position: c
        for c in session.scalars(
            select(Candidate).where(Candidate.source_id == source.id, Candidate.evaluation_id.is_(None))
        )
    }
    copy = Source(
        project_id=source.project_id,
        upload_sha256=_copy_key(instance.id),
        filename=source.filename,
        kind=source.kind,
        lq_sha256=source.lq_sha256,
        hq_sha256=source.hq_sha256,
        width=source.width,
        height=source.height,
        degradation={"sanity_of": {"source_id": source.id, "instance_id": instance.id}, **params},
        prompt=source.prompt,
        state="sanity",
    )
    session.add(copy)
    session.flush()
    degraded = None
    for position, sha in enumerate(plan.candidate_shas):
        original = originals[position]
        row = Candidate(
            source_id=copy.id,
            position=position,
            sha256=degraded_sha256 if position == plan.degraded_position else sha,
            width=original.width,
            height=original.height,
            generator=original.generator,
            model=original.model,
            weights_digest=original.weights_digest,
            settings=original.settings,
            seed=original.seed,
        )
        session.add(row)
        if position == plan.degraded_position:
            degraded = row
    twin = Instance(
        source_id=copy.id,
        position=0,
        mask_sha256=instance.mask_sha256,
        x0=instance.x0,
        y0=instance.y0,
        x1=instance.x1,
        y1=instance.y1,
        area=instance.area,
        weight=instance.weight,
        is_rest=instance.is_rest,
        contest_score=instance.contest_score,
    )
    session.add(twin)
    session.flush()
    assert degraded is not None
    task = Task(
        project_id=project.id,
        source_id=copy.id,
        instance_id=twin.id,
        kind="instance",
        required_votes=project.overlap,
        state="gold",
        gold_worst_candidate_id=degraded.id,
    )
    session.add(task)
    session.flush()
    return task
