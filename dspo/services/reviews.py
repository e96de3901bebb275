"""Review of disputed tasks. Annotators flag a task for review; a reviewer's queue lists the tasks
whose answers disagree (the contested drop reasons of dspo.aggregate) or that someone flagged; the
review of a task shows every answer with who gave it, and the reviewer's decision (a winner and a
loser, or no pair) overrides aggregation for that task in the datasets built after it.

A review only adds a row: no vote is deleted and no task changes state, so no task reopens and
dspo.assign.mark_reopened has nothing to do."""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dspo.aggregate import CONTESTED, AggregationSettings, drop_reasons, newest_vote_id
from dspo.db import utcnow
from dspo.errors import Conflict, Forbidden, InvalidInput
from dspo.models import Candidate, Instance, Project, Review, Source, Task, TaskFlag, User, Vote
from dspo.services import members
from dspo.services.tokens import Principal

Decision = Literal["pair", "no_pair"]


@dataclass
class Flag:
    user_id: int
    username: str
    reason: str
    created_at: datetime


@dataclass
class ReviewEntry:
    id: int
    task_id: int
    reviewer_id: int
    reviewer: str
    decision: str
    best_candidate_id: int | None
    worst_candidate_id: int | None
    note: str
    created_at: datetime


@dataclass
class QueueItem:
    task_id: int
    kind: str
    source_id: int
    answers: int  # answers that are not skips
    disputed: list[str]  # why: a contested drop reason of its votes, "flagged", or both
    flags: list[Flag]
    review: ReviewEntry | None  # the newest one


@dataclass
class Answer:
    vote_id: int
    user_id: int
    username: str
    outcome: str
    best_candidate_id: int | None
    worst_candidate_id: int | None
    content_text: str
    defect_text: str
    lead_time_ms: int | None
    created_at: datetime


@dataclass
class TaskForReview:
    """What the review page shows: the task as the task page draws it (candidates in their stored
    order), its answers, flags and reviews (newest first), and why its votes are contested."""

    id: int
    project_id: int
    source_id: int
    instance_id: int | None
    kind: str
    instructions: str
    image_size: tuple[int, int]
    box: tuple[int, int, int, int]
    candidate_ids: list[int]
    answers: list[Answer]
    flags: list[Flag]
    reviews: list[ReviewEntry]
    contested: str | None


def _require_reviewer(user: Principal) -> None:
    if not members.sees_every_answer(user):
        raise Forbidden(f"reviewing needs the reviewer or admin role; your account is a {user.role} account")


def require_reviewer_of(session: Session, user: Principal, project_id: int) -> Project:
    """The project, if the user reviews it: NotFound for a project they cannot see, Forbidden for an
    annotator of it."""
    project = members.require_project(session, user, project_id)
    _require_reviewer(user)
    return project


def _task(session: Session, user: Principal, task_id: int) -> Task:
    """The task, if the user may see it (NotFound otherwise) and it is not an evaluation's (Conflict)."""
    members.require_task(session, user, task_id)
    task = session.get(Task, task_id)
    assert task is not None
    if task.evaluation_id is not None:
        raise Conflict(
            f"task {task_id} belongs to an evaluation round, which decides a promotion: not reviewed"
        )
    return task


def require_task_reviewer(session: Session, user: Principal, task_id: int) -> Project:
    """The project of the task, if the user reviews it (NotFound, Forbidden, Conflict as above)."""
    task = _task(session, user, task_id)
    _require_reviewer(user)
    project = session.get(Project, task.project_id)
    assert project is not None
    return project


def flag_task(session: Session, user: Principal, task_id: int, reason: str) -> tuple[TaskFlag, bool]:
    """Ask for a review of this task (any member of its project may); flagging again replaces the
    reason. Returns (flag, created)."""
    _task(session, user, task_id)
    flag = session.scalars(
        select(TaskFlag).where(TaskFlag.task_id == task_id, TaskFlag.user_id == user.id)
    ).first()
    created = flag is None
    if flag is None:
        flag = TaskFlag(task_id=task_id, user_id=user.id, reason=reason)
        session.add(flag)
    else:
        flag.reason, flag.created_at = reason, utcnow()
    session.commit()
    return flag, created


def _flags(session: Session, task_ids: list[int]) -> dict[int, list[Flag]]:
    rows = session.execute(
        select(TaskFlag.task_id, TaskFlag.user_id, User.username, TaskFlag.reason, TaskFlag.created_at)
        .join(User, User.id == TaskFlag.user_id)
        .where(TaskFlag.task_id.in_(task_ids))
        .order_by(TaskFlag.created_at, TaskFlag.id)
    )
    found: dict[int, list[Flag]] = {}
    for task_id, *flag in rows:
        found.setdefault(task_id, []).append(Flag(*flag))
    return found


def _reviews(session: Session, task_ids: list[int]) -> dict[int, list[ReviewEntry]]:
    """task → its reviews, newest first."""
    rows = session.execute(
        select(
            Review.id,
            Review.task_id,
            Review.reviewer_id,
            User.username,
            Review.decision,
            Review.best_candidate_id,
            Review.worst_candidate_id,
            Review.note,
            Review.created_at,
        )
        .join(User, User.id == Review.reviewer_id)
        .where(Review.task_id.in_(task_ids))
        .order_by(Review.id.desc())
    )
    found: dict[int, list[ReviewEntry]] = {}
    for row in rows:
        found.setdefault(row.task_id, []).append(ReviewEntry(*row))
    return found


def _contested(session: Session, project_id: int, min_agreement: float) -> dict[int, str]:
    """task → why its votes give no pair, for tasks with enough answers that disagree: what the votes
    alone say (reviews left out), by the aggregation that builds datasets (the project's method)."""
    method = session.scalar(select(Project.aggregation).where(Project.id == project_id))
    settings = AggregationSettings(min_agreement=min_agreement, method=method or "plurality")
    reasons = drop_reasons(session, project_id, newest_vote_id(session, project_id), settings)
    return {task_id: reason for task_id, reason in reasons.items() if reason in CONTESTED}


def queue(session: Session, user: Principal, project_id: int, min_agreement: float = 0.5) -> list[QueueItem]:
    """The project's disputed tasks: those not reviewed yet first, then by task id."""
    require_reviewer_of(session, user, project_id)
    contested = _contested(session, project_id, min_agreement)
    flagged = session.scalars(
        select(TaskFlag.task_id)
        .join(Task, Task.id == TaskFlag.task_id)
        .where(Task.project_id == project_id, Task.evaluation_id.is_(None))
    ).all()
    task_ids = sorted(set(contested) | set(flagged))
    if not task_ids:
        return []
    tasks = session.execute(
        select(Task.id, Task.kind, Task.source_id, func.count(Vote.id))
        .outerjoin(Vote, (Vote.task_id == Task.id) & (Vote.outcome != "skip"))
        .where(Task.id.in_(task_ids))
        .group_by(Task.id, Task.kind, Task.source_id)
    )
    flags, reviews = _flags(session, task_ids), _reviews(session, task_ids)
    items = [
        QueueItem(
            task_id=task_id,
            kind=kind,
            source_id=source_id,
            answers=answers,
            disputed=[
                reason
                for reason in (contested.get(task_id), "flagged" if task_id in flags else None)
                if reason
            ],
            flags=flags.get(task_id, []),
            review=reviews[task_id][0] if task_id in reviews else None,
        )
        for task_id, kind, source_id, answers in tasks
    ]
    return sorted(items, key=lambda item: (item.review is not None, item.task_id))


def task_for_review(
    session: Session, user: Principal, task_id: int, min_agreement: float = 0.5
) -> TaskForReview:
    task = _task(session, user, task_id)
    _require_reviewer(user)
    project = session.get(Project, task.project_id)
    source = session.get(Source, task.source_id)
    assert project is not None and source is not None and source.width and source.height
    size = (source.width * project.scale, source.height * project.scale)
    instance = session.get(Instance, task.instance_id) if task.instance_id is not None else None
    box = (instance.x0, instance.y0, instance.x1, instance.y1) if instance else (0, 0, *size)
    candidate_ids = session.scalars(
        select(Candidate.id)
        .where(Candidate.source_id == task.source_id, Candidate.evaluation_id.is_(None))
        .order_by(Candidate.position)
    ).all()
    answers = session.execute(
        select(
            Vote.id,
            Vote.user_id,
            User.username,
            Vote.outcome,
            Vote.best_candidate_id,
            Vote.worst_candidate_id,
            Vote.content_text,
            Vote.defect_text,
            Vote.lead_time_ms,
            Vote.created_at,
        )
        .join(User, User.id == Vote.user_id)
        .where(Vote.task_id == task_id)
        .order_by(Vote.id)
    )
    return TaskForReview(
        id=task.id,
        project_id=task.project_id,
        source_id=task.source_id,
        instance_id=task.instance_id,
        kind=task.kind,
        instructions=project.instructions,
        image_size=size,
        box=box,
        candidate_ids=list(candidate_ids),
        answers=[Answer(*row) for row in answers],
        flags=_flags(session, [task_id]).get(task_id, []),
        reviews=_reviews(session, [task_id]).get(task_id, []),
        contested=_contested(session, task.project_id, min_agreement).get(task_id),
    )


def record_review(
    session: Session,
    user: Principal,
    task_id: int,
    *,
    decision: Decision,
    best_candidate_id: int | None,
    worst_candidate_id: int | None,
    note: str = "",
) -> ReviewEntry:
    """Decide the task: its winner and loser ("pair", two different candidates of the task) or that it
    gives no record ("no_pair", no candidates). It replaces any earlier review in datasets built from
    now on; the earlier ones stay in the task's history."""
    task = _task(session, user, task_id)
    _require_reviewer(user)
    chosen = (best_candidate_id, worst_candidate_id)
    if decision == "no_pair" and chosen != (None, None):
        raise InvalidInput("a no_pair decision names no candidates")
    if decision == "pair":
        ids = set(
            session.scalars(
                select(Candidate.id).where(
                    Candidate.source_id == task.source_id, Candidate.evaluation_id.is_(None)
                )
            )
        )
        if None in chosen or best_candidate_id == worst_candidate_id or not set(chosen) <= ids:
            raise InvalidInput(
                f"a pair decision names two different candidates of task {task_id}: {sorted(ids)}"
            )
    review = Review(
        task_id=task_id,
        reviewer_id=user.id,
        decision=decision,
        best_candidate_id=best_candidate_id,
        worst_candidate_id=worst_candidate_id,
        note=note,
    )
    session.add(review)
    session.commit()
    return _reviews(session, [task_id])[task_id][0]
