"""Handing out tasks and taking votes, safely under concurrency on PostgreSQL and SQLite.

A task wants ``required_votes`` answers. ``Task.slots_taken`` counts the accepted votes plus the live
leases; a lease reserves one slot for one annotator until it expires, so that two annotators never
fill the same last slot. `next` locks the task row it picks (FOR UPDATE SKIP LOCKED on PostgreSQL;
SQLite serialises writers with BEGIN IMMEDIATE), so the slot check and the lease are one atomic step.
Lock order is always lease rows before task rows, so reclaiming, voting and releasing cannot deadlock.
"""

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from dspo.errors import Conflict, InvalidInput, NotFound
from dspo.models import Candidate, Lease, Task, Vote

COUNTED_OUTCOMES = ("pick", "tie", "all_bad")
OUTCOMES = (*COUNTED_OUTCOMES, "skip")


@dataclass
class VoteInput:
    outcome: str
    client_submission_id: str
    best_candidate_id: int | None = None
    worst_candidate_id: int | None = None
    content_text: str = ""
    defect_text: str = ""
    lead_time_ms: int | None = None


def shown_order(task_id: int, user_id: int, candidate_ids: list[int]) -> list[int]:
    """The candidates in an order shuffled for this annotator and task, the same on every call."""
    seed = hashlib.sha256(f"{task_id}:{user_id}".encode()).digest()
    order = sorted(candidate_ids)
    random.Random(seed).shuffle(order)
    return order


def candidate_ids(session: Session, source_id: int) -> list[int]:
    stmt = select(Candidate.id).where(Candidate.source_id == source_id).order_by(Candidate.position)
    return list(session.scalars(stmt))


def reclaim_expired_leases(session: Session, now: datetime) -> int:
    """Free the slots of leases that ran out; each expired lease is freed exactly once."""
    task_ids = session.scalars(delete(Lease).where(Lease.expires_at < now).returning(Lease.task_id)).all()
    for task_id, n in sorted(Counter(task_ids).items()):
        session.execute(update(Task).where(Task.id == task_id).values(slots_taken=Task.slots_taken - n))
    return len(task_ids)


def next_task(
    session: Session, *, project_id: int, user_id: int, now: datetime, lease_seconds: int
) -> tuple[Task, Lease] | None:
    """The task this annotator holds a live lease on, else a new lease on the first open task with a
    free slot that they have neither answered nor skipped; None when there is none."""
    held = session.execute(
        select(Task, Lease)
        .join(Lease, Lease.task_id == Task.id)
        .where(Lease.user_id == user_id, Task.project_id == project_id, Lease.expires_at >= now)
        .order_by(Lease.id)
        .limit(1)
    ).first()
    if held is not None:
        task, lease = held
        return task, lease

    reclaim_expired_leases(session, now)
    answered = exists().where(Vote.task_id == Task.id, Vote.user_id == user_id)
    leased = exists().where(Lease.task_id == Task.id, Lease.user_id == user_id)
    stmt = (
        select(Task)
        .where(
            Task.project_id == project_id,
            Task.state == "open",
            Task.slots_taken < Task.required_votes,
            ~answered,
            ~leased,
        )
        .order_by(Task.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=Task)
    task = session.scalars(stmt).first()
    if task is None:
        return None
    lease = Lease(task_id=task.id, user_id=user_id, expires_at=now + timedelta(seconds=lease_seconds))
    session.add(lease)
    session.execute(update(Task).where(Task.id == task.id).values(slots_taken=Task.slots_taken + 1))
    session.flush()
    session.refresh(task)
    return task, lease


def _take_lease(session: Session, task_id: int, user_id: int) -> bool:
    """Delete this annotator's lease on the task; True if there was one (expired or not: an expired
    lease that was not reclaimed yet still holds its slot)."""
    stmt = delete(Lease).where(Lease.task_id == task_id, Lease.user_id == user_id).returning(Lease.id)
    return session.scalars(stmt).first() is not None


def _lock_task(session: Session, task_id: int) -> Task:
    stmt = select(Task).where(Task.id == task_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    task = session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    return task


def _same_vote(vote: Vote, task_id: int, data: VoteInput) -> bool:
    return (
        vote.task_id == task_id
        and vote.outcome == data.outcome
        and vote.best_candidate_id == data.best_candidate_id
        and vote.worst_candidate_id == data.worst_candidate_id
        and vote.content_text == data.content_text
        and vote.defect_text == data.defect_text
    )


def find_replay(session: Session, *, task_id: int, user_id: int, data: VoteInput) -> Vote | None:
    """The vote this submission id already produced, if any; a reused id with other content is a 409."""
    stmt = select(Vote).where(Vote.user_id == user_id, Vote.client_submission_id == data.client_submission_id)
    previous = session.scalars(stmt).first()
    if previous is not None and not _same_vote(previous, task_id, data):
        raise Conflict(
            f"client_submission_id {data.client_submission_id!r} was already used for another answer "
            f"(vote {previous.id}); use a new id for a new answer"
        )
    return previous


def _validate(data: VoteInput, candidates: list[int]) -> None:
    if data.outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}, not {data.outcome!r}")
    chosen = (data.best_candidate_id, data.worst_candidate_id)
    if data.outcome == "pick":
        if None in chosen:
            raise InvalidInput("a pick needs both best_candidate_id and worst_candidate_id")
        if data.best_candidate_id == data.worst_candidate_id:
            raise InvalidInput("the best and the worst candidate must differ")
        unknown = [c for c in chosen if c not in candidates]
        if unknown:
            raise InvalidInput(f"candidates {unknown} are not candidates of this task ({candidates})")
    elif chosen != (None, None):
        raise InvalidInput(f"a {data.outcome!r} answer names no best or worst candidate")


def submit_vote(session: Session, *, task_id: int, user_id: int, data: VoteInput, now: datetime) -> Vote:
    """Record an answer (or a skip). Idempotent by client_submission_id; a different second answer by
    the same annotator on the same task is a Conflict."""
    replay = find_replay(session, task_id=task_id, user_id=user_id, data=data)
    if replay is not None:
        return replay
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    candidates = candidate_ids(session, task.source_id)
    _validate(data, candidates)
    earlier = session.scalars(select(Vote).where(Vote.task_id == task_id, Vote.user_id == user_id)).first()
    if earlier is not None:
        raise Conflict(f"you already answered task {task_id} (vote {earlier.id}, {earlier.outcome})")

    had_lease = _take_lease(session, task_id, user_id)
    task = _lock_task(session, task_id)
    slots = task.slots_taken
    if data.outcome == "skip":
        slots -= 1 if had_lease else 0
    elif not had_lease:
        if task.slots_taken >= task.required_votes:
            raise Conflict(
                f"task {task_id} has no free slot: your lease expired and others filled it; "
                "ask for the next task"
            )
        slots += 1
    vote = Vote(
        task_id=task_id,
        user_id=user_id,
        outcome=data.outcome,
        best_candidate_id=data.best_candidate_id,
        worst_candidate_id=data.worst_candidate_id,
        content_text=data.content_text,
        defect_text=data.defect_text,
        shown_order=shown_order(task_id, user_id, candidates),
        lead_time_ms=data.lead_time_ms,
        client_submission_id=data.client_submission_id,
        created_at=now,
    )
    session.add(vote)
    task.slots_taken = slots
    if data.outcome in COUNTED_OUTCOMES:
        task.vote_count += 1
        if task.vote_count >= task.required_votes:
            task.state = "complete"
    session.flush()
    return vote


def release_task(session: Session, *, task_id: int, user_id: int) -> bool:
    """Give a leased task back without answering; False if the annotator held no lease on it."""
    if not _take_lease(session, task_id, user_id):
        return False
    task = _lock_task(session, task_id)
    task.slots_taken -= 1
    session.flush()
    return True
