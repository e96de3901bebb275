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

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from dspo.errors import Conflict, InvalidInput, NotFound
from dspo.models import Candidate, Lease, Project, Task, Vote, VoteRevision

COUNTED_OUTCOMES = ("pick", "tie", "all_bad")
OUTCOMES = (*COUNTED_OUTCOMES, "skip")
# How long after an answer its annotator may still replace it (undo). Longer than the page offers
# undo for, so that a replacement that waited in the browser during a short outage still goes in.
REPLACE_GRACE = timedelta(minutes=10)


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
    session: Session, *, project_id: int, user_id: int, now: datetime, lease_seconds: int, position: int = 0
) -> tuple[Task, Lease] | None:
    """The annotator's live leases in this project form a queue, oldest first; return the one at
    `position`, leasing new tasks (the first open ones with a free slot that they have neither
    answered, skipped nor leased) until the queue is that long; None when there are not enough.

    Position 0 is the task to show now (the same one until it is answered); position 1 lets the web
    page lease and preload the task after it, so that the next task appears without a round trip."""
    held = session.execute(
        select(Task, Lease)
        .join(Lease, Lease.task_id == Task.id)
        .where(Lease.user_id == user_id, Task.project_id == project_id, Lease.expires_at >= now)
        .order_by(Lease.id)
        .limit(position + 1)
    ).all()
    if len(held) > position:
        task, lease = held[position]
        return task, lease

    reclaim_expired_leases(session, now)
    picked = None
    for _ in range(position + 1 - len(held)):
        picked = _lease_new(session, project_id=project_id, user_id=user_id, now=now, seconds=lease_seconds)
        if picked is None:
            return None
    return picked


def _lease_new(
    session: Session, *, project_id: int, user_id: int, now: datetime, seconds: int
) -> tuple[Task, Lease] | None:
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
    lease = Lease(task_id=task.id, user_id=user_id, expires_at=now + timedelta(seconds=seconds))
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


def _replay_or_conflict(session: Session, *, task_id: int, user_id: int, data: VoteInput) -> Vote | None:
    """One look at this annotator's votes that matter here: the one this submission id produced (a
    replay), or another answer to the same task (a Conflict)."""
    stmt = select(Vote).where(
        Vote.user_id == user_id,
        or_(Vote.client_submission_id == data.client_submission_id, Vote.task_id == task_id),
    )
    votes = session.scalars(stmt).all()
    for vote in votes:
        if vote.client_submission_id == data.client_submission_id:
            return find_replay(session, task_id=task_id, user_id=user_id, data=data)
    for vote in votes:
        raise Conflict(f"you already answered task {task_id} (vote {vote.id}, {vote.outcome})")
    return None


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


def _check_texts(project: Project, data: VoteInput) -> None:
    """The project's text requirements: content for every answer, defect for a pick (it has a worst)."""
    if project.require_content and data.outcome in COUNTED_OUTCOMES and not data.content_text.strip():
        raise InvalidInput("this project needs content_text: say what the region really shows")
    if project.require_defect and data.outcome == "pick" and not data.defect_text.strip():
        raise InvalidInput("this project needs defect_text: say what is wrong in the worst candidate")


def _task_and_project(session: Session, task_id: int) -> tuple[Task, Project]:
    row = session.execute(
        select(Task, Project).join(Project, Project.id == Task.project_id).where(Task.id == task_id)
    ).first()
    if row is None:
        raise NotFound(f"task {task_id} does not exist")
    task, project = row
    return task, project


def submit_vote(
    session: Session, *, task_id: int, user_id: int, data: VoteInput, now: datetime
) -> tuple[Vote, bool]:
    """Record an answer (or a skip); returns the vote and whether it is new. Idempotent by
    client_submission_id (a replay returns the first vote, not new); a different second answer by the
    same annotator on the same task is a Conflict. A copy of a submission that races its original to
    the insert fails on the unique constraints: the caller rolls back and looks for the replay."""
    replay = _replay_or_conflict(session, task_id=task_id, user_id=user_id, data=data)
    if replay is not None:
        return replay, False
    task, project = _task_and_project(session, task_id)
    candidates = candidate_ids(session, task.source_id)
    _validate(data, candidates)
    _check_texts(project, data)

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
    return vote, True


def replace_vote(
    session: Session,
    *,
    task_id: int,
    user_id: int,
    replaces_submission_id: str,
    data: VoteInput,
    now: datetime,
    grace: timedelta = REPLACE_GRACE,
) -> tuple[Vote, bool]:
    """Undo: replace the answer recorded under `replaces_submission_id` by a new one (any outcome, a
    skip included). The vote row keeps its id and takes the new answer; the old one goes to
    vote_revisions. Slots follow the outcome: a counted answer that becomes a skip frees its slot, and
    a skip that becomes an answer needs a free one. Idempotent by the new client_submission_id. If
    nothing was recorded under the old id (it failed), the new answer is recorded as a plain vote."""
    replay = find_replay(session, task_id=task_id, user_id=user_id, data=data)
    if replay is not None:
        return replay, False
    stmt = select(Vote).where(Vote.user_id == user_id, Vote.client_submission_id == replaces_submission_id)
    if session.scalars(stmt).first() is None:
        return submit_vote(session, task_id=task_id, user_id=user_id, data=data, now=now)
    task = _lock_task(session, task_id)
    # Read again under the task lock: a concurrent replacement of the same vote has finished by now.
    old = session.scalars(stmt.execution_options(populate_existing=True)).first()
    if old is None or old.task_id != task_id:
        raise Conflict(f"submission {replaces_submission_id!r} is not your current answer to task {task_id}")
    if now - old.created_at > grace:
        raise Conflict(f"vote {old.id} is older than {grace.total_seconds():.0f} s: too late to undo it")
    _validate(data, candidate_ids(session, task.source_id))
    project = session.get(Project, task.project_id)
    assert project is not None
    _check_texts(project, data)

    was_counted = old.outcome in COUNTED_OUTCOMES
    counted = data.outcome in COUNTED_OUTCOMES
    if counted and not was_counted:
        if task.slots_taken >= task.required_votes:
            raise Conflict(f"task {task_id} was filled by others after you skipped it; your skip stays")
        task.slots_taken += 1
        task.vote_count += 1
    elif was_counted and not counted:
        task.slots_taken -= 1
        task.vote_count -= 1
    task.state = "complete" if task.vote_count >= task.required_votes else "open"

    session.add(
        VoteRevision(
            vote_id=old.id,
            outcome=old.outcome,
            best_candidate_id=old.best_candidate_id,
            worst_candidate_id=old.worst_candidate_id,
            content_text=old.content_text,
            defect_text=old.defect_text,
            lead_time_ms=old.lead_time_ms,
            client_submission_id=old.client_submission_id,
            created_at=old.created_at,
            replaced_at=now,
        )
    )
    for name in ("outcome", "best_candidate_id", "worst_candidate_id", "content_text", "defect_text"):
        setattr(old, name, getattr(data, name))
    old.lead_time_ms = data.lead_time_ms
    old.client_submission_id = data.client_submission_id
    old.created_at = now
    session.flush()
    return old, True


def release_task(session: Session, *, task_id: int, user_id: int) -> bool:
    """Give a leased task back without answering; False if the annotator held no lease on it."""
    if not _take_lease(session, task_id, user_id):
        return False
    task = _lock_task(session, task_id)
    task.slots_taken -= 1
    session.flush()
    return True
