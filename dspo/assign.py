"""Handing out tasks and taking votes, safely under concurrency on PostgreSQL and SQLite.

A task wants ``required_votes`` answers. ``Task.slots_taken`` counts the accepted votes plus the live
leases; a lease reserves one slot for one annotator until it expires, so that two annotators never
fill the same last slot. `next` locks the task row it picks (FOR UPDATE SKIP LOCKED on PostgreSQL;
SQLite serialises writers with BEGIN IMMEDIATE), so the slot check and the lease are one atomic step.
Lock order is always lease rows before task rows, so reclaiming, voting and releasing cannot deadlock.

`next` and `vote` are what every annotator calls in a loop, so they are written as a handful of Core
statements on the tables (no ORM unit of work): a few round trips per request is what makes the loop
fast. Undo and the lookups after a failed vote, which are rare, load Vote rows through the ORM.
"""

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    Row,
    String,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from dspo.errors import Conflict, InvalidInput, NotFound
from dspo.models import Candidate, Instance, Lease, Project, Source, Task, Vote, VoteRevision

COUNTED_OUTCOMES = ("pick", "tie", "all_bad")
OUTCOMES = (*COUNTED_OUTCOMES, "skip")
# How long after an answer its annotator may still replace it (undo). Longer than the page offers
# undo for, so that a replacement that waited in the browser during a short outage still goes in.
REPLACE_GRACE = timedelta(minutes=10)

tasks, leases, votes = Task.__table__, Lease.__table__, Vote.__table__
projects, sources, instances, candidates = (
    Project.__table__,
    Source.__table__,
    Instance.__table__,
    Candidate.__table__,
)

# The candidate ids of a task's source as one "3,1,2" string (order undefined), so that one statement
# returns a task with its candidates on both backends (string_agg / group_concat). An evaluation task's
# candidates are its round's two outputs; every other task's are the source's own candidates.
CANDIDATE_IDS = (
    select(func.aggregate_strings(cast(candidates.c.id, String), ","))
    .where(
        candidates.c.source_id == tasks.c.source_id,
        candidates.c.evaluation_id.is_not_distinct_from(tasks.c.evaluation_id),
    )
    .scalar_subquery()
    .label("candidate_ids")
)


def _ids(joined: str | None) -> list[int]:
    return sorted(int(x) for x in joined.split(",")) if joined else []


@dataclass
class VoteInput:
    outcome: str
    client_submission_id: str
    best_candidate_id: int | None = None
    worst_candidate_id: int | None = None
    content_text: str = ""
    defect_text: str = ""
    lead_time_ms: int | None = None


@dataclass(frozen=True)
class LeasedTask:
    """What the annotator needs to see a leased task: the task, where it sits, and its candidates."""

    id: int
    project_id: int
    source_id: int
    instance_id: int | None
    kind: str
    lease_expires_at: datetime
    instructions: str
    image_size: tuple[int, int]  # of the upsampled image, which candidates and boxes refer to
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the instance; the whole image for image tasks
    candidate_ids: list[int]  # sorted


def shown_order(task_id: int, user_id: int, candidate_ids: list[int]) -> list[int]:
    """The candidates in an order shuffled for this annotator and task, the same on every call."""
    seed = hashlib.sha256(f"{task_id}:{user_id}".encode()).digest()
    order = sorted(candidate_ids)
    random.Random(seed).shuffle(order)
    return order


# The statements of `next` and `vote`, built once: building and hashing a statement costs about as much
# CPU as running it. Parameters are bound by name at execution.
_RECLAIM = delete(leases).where(leases.c.expires_at < bindparam("now")).returning(leases.c.task_id)
_FREE_SLOTS = (
    update(tasks)
    .where(tasks.c.id == bindparam("tid"))
    .values(slots_taken=tasks.c.slots_taken - bindparam("n", type_=Integer))
)


# Everything the annotator's view of a leased task needs: the task, its project's instructions and
# scale, the image size, the instance box and the candidate ids.
_TASK_VIEW = (
    select(
        tasks.c.id,
        tasks.c.project_id,
        tasks.c.source_id,
        tasks.c.instance_id,
        tasks.c.kind,
        leases.c.expires_at,
        projects.c.instructions,
        projects.c.scale,
        sources.c.width,
        sources.c.height,
        instances.c.x0,
        instances.c.y0,
        instances.c.x1,
        instances.c.y1,
        CANDIDATE_IDS,
    )
    .select_from(leases)
    .join(tasks, tasks.c.id == leases.c.task_id)
    .join(projects, projects.c.id == tasks.c.project_id)
    .join(sources, sources.c.id == tasks.c.source_id)
    .outerjoin(instances, instances.c.id == tasks.c.instance_id)
)
_HELD = (
    _TASK_VIEW.where(
        leases.c.user_id == bindparam("user_id"),
        tasks.c.project_id == bindparam("project_id"),
        leases.c.expires_at >= bindparam("now"),
    )
    .order_by(leases.c.id)
    .limit(bindparam("limit", type_=Integer))
)
_LEASED = _TASK_VIEW.where(leases.c.task_id == bindparam("tid"), leases.c.user_id == bindparam("user_id"))
# SQLite: the transaction holds the database's write lock from its start (BEGIN IMMEDIATE), so the
# pick, the slot and the lease are atomic without row locks.
_PICK = (
    select(tasks.c.id)
    .where(
        tasks.c.project_id == bindparam("project_id"),
        tasks.c.state == "open",
        tasks.c.slots_taken < tasks.c.required_votes,
        ~exists().where(votes.c.task_id == tasks.c.id, votes.c.user_id == bindparam("user_id")),
        ~exists().where(leases.c.task_id == tasks.c.id, leases.c.user_id == bindparam("user_id")),
    )
    .order_by(tasks.c.id)
    .limit(1)
)
_TAKE_SLOT = update(tasks).where(tasks.c.id == bindparam("tid")).values(slots_taken=tasks.c.slots_taken + 1)
_LEASE = insert(leases)
# PostgreSQL: pick a task (its row locked, rows locked by others skipped), take a slot and insert the
# lease in one round trip. Plain SQL: SQLAlchemy 2.1.9 loses a bound value of a CTE nested in an
# UPDATE CTE. Same conditions as _PICK.
_PICK_AND_LEASE = text(
    """
    WITH picked AS (
        SELECT id FROM tasks
        WHERE project_id = :project_id AND state = 'open' AND slots_taken < required_votes
          AND NOT EXISTS (SELECT 1 FROM votes WHERE votes.task_id = tasks.id AND votes.user_id = :user_id)
          AND NOT EXISTS (SELECT 1 FROM leases WHERE leases.task_id = tasks.id AND leases.user_id = :user_id)
        ORDER BY id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ), taken AS (
        UPDATE tasks SET slots_taken = tasks.slots_taken + 1 FROM picked WHERE tasks.id = picked.id
        RETURNING tasks.id
    )
    INSERT INTO leases (task_id, user_id, expires_at, created_at)
    SELECT id, :user_id, :expires_at, :now FROM taken
    RETURNING task_id
    """
).bindparams(
    bindparam("expires_at", type_=leases.c.expires_at.type), bindparam("now", type_=leases.c.created_at.type)
)
_TASK_FOR_VOTE = (
    select(
        tasks.c.required_votes,
        tasks.c.vote_count,
        tasks.c.slots_taken,
        projects.c.require_content,
        projects.c.require_defect,
        CANDIDATE_IDS,
    )
    .join(projects, projects.c.id == tasks.c.project_id)
    .where(tasks.c.id == bindparam("tid"))
)
_TASK_FOR_VOTE_LOCKED = _TASK_FOR_VOTE.with_for_update(of=tasks)
_TAKE_LEASE = (
    delete(leases)
    .where(leases.c.task_id == bindparam("tid"), leases.c.user_id == bindparam("user_id"))
    .returning(leases.c.id)
)
_INSERT_VOTE = insert(votes).returning(*votes.c)
_COUNT_VOTE = (
    update(tasks)
    .where(tasks.c.id == bindparam("tid"))
    .values(
        slots_taken=bindparam("new_slots", type_=Integer),
        vote_count=bindparam("new_count", type_=Integer),
        state=bindparam("new_state", type_=String),
    )
)


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def reclaim_expired_leases(session: Session, now: datetime) -> int:
    """Free the slots of leases that ran out; each expired lease is freed exactly once."""
    task_ids = session.scalars(_RECLAIM, {"now": now}).all()
    for task_id, n in sorted(Counter(task_ids).items()):
        session.execute(_FREE_SLOTS, {"tid": task_id, "n": n})
    return len(task_ids)


def _leased_task(row: Row[Any]) -> LeasedTask:
    size = (row.width * row.scale, row.height * row.scale)
    return LeasedTask(
        id=row.id,
        project_id=row.project_id,
        source_id=row.source_id,
        instance_id=row.instance_id,
        kind=row.kind,
        lease_expires_at=row.expires_at,
        instructions=row.instructions,
        image_size=size,
        box=(row.x0, row.y0, row.x1, row.y1) if row.instance_id is not None else (0, 0, *size),
        candidate_ids=_ids(row.candidate_ids),
    )


def next_task(
    session: Session, *, project_id: int, user_id: int, now: datetime, lease_seconds: int, position: int = 0
) -> LeasedTask | None:
    """The annotator's live leases in this project form a queue, oldest first; return the one at
    `position`, leasing new tasks (the first open ones with a free slot that they have neither
    answered, skipped nor leased) until the queue is that long; None when there are not enough.

    Position 0 is the task to show now (the same one until it is answered); position 1 lets the web
    page lease and preload the task after it, so that the next task appears without a round trip."""
    params = {"user_id": user_id, "project_id": project_id, "now": now, "limit": position + 1}
    held = session.execute(_HELD, params).all()
    if len(held) > position:
        return _leased_task(held[position])

    reclaim_expired_leases(session, now)
    leased = None
    for _ in range(position + 1 - len(held)):
        leased = _lease_new(session, project_id=project_id, user_id=user_id, now=now, seconds=lease_seconds)
        if leased is None:
            return None
    return leased


def _lease_new(
    session: Session, *, project_id: int, user_id: int, now: datetime, seconds: int
) -> LeasedTask | None:
    expires_at = now + timedelta(seconds=seconds)
    if _postgres(session):
        params = {"project_id": project_id, "user_id": user_id, "expires_at": expires_at, "now": now}
        task_id = session.scalar(_PICK_AND_LEASE, params)
        if task_id is None:
            return None
    else:
        task_id = session.scalar(_PICK, {"project_id": project_id, "user_id": user_id})
        if task_id is None:
            return None
        session.execute(_TAKE_SLOT, {"tid": task_id})
        session.execute(
            _LEASE, {"task_id": task_id, "user_id": user_id, "expires_at": expires_at, "created_at": now}
        )
    return _leased_task(session.execute(_LEASED, {"tid": task_id, "user_id": user_id}).one())


def _take_lease(session: Session, task_id: int, user_id: int) -> bool:
    """Delete this annotator's lease on the task; True if there was one (expired or not: an expired
    lease that was not reclaimed yet still holds its slot)."""
    return session.scalars(_TAKE_LEASE, {"tid": task_id, "user_id": user_id}).first() is not None


def _same_vote(vote: Vote, task_id: int, data: VoteInput) -> bool:
    return (
        vote.task_id == task_id
        and vote.outcome == data.outcome
        and vote.best_candidate_id == data.best_candidate_id
        and vote.worst_candidate_id == data.worst_candidate_id
        and vote.content_text == data.content_text
        and vote.defect_text == data.defect_text
    )


def _replayed(previous: Vote, task_id: int, data: VoteInput) -> Vote:
    """The vote a submission id produced, if this submission repeats it; a reused id is a Conflict."""
    if not _same_vote(previous, task_id, data):
        raise Conflict(
            f"client_submission_id {data.client_submission_id!r} was already used for another answer "
            f"(vote {previous.id}); use a new id for a new answer"
        )
    return previous


def find_replay(session: Session, *, task_id: int, user_id: int, data: VoteInput) -> Vote | None:
    """The vote this submission id already produced, if any; a reused id with other content is a 409."""
    stmt = select(Vote).where(Vote.user_id == user_id, Vote.client_submission_id == data.client_submission_id)
    previous = session.scalars(stmt).first()
    return None if previous is None else _replayed(previous, task_id, data)


def earlier_answer(session: Session, *, task_id: int, user_id: int, data: VoteInput) -> Vote | None:
    """After a submission failed: the vote this submission id produced before (a replay, to be
    answered with that vote), a Conflict if the annotator already answered the task otherwise or used
    the id for another answer, or None when neither explains the failure."""
    stmt = select(Vote).where(
        Vote.user_id == user_id,
        or_(Vote.client_submission_id == data.client_submission_id, Vote.task_id == task_id),
    )
    found = session.scalars(stmt).all()
    for vote in found:
        if vote.client_submission_id == data.client_submission_id:
            return _replayed(vote, task_id, data)
    for vote in found:
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


def _check_texts(require_content: bool, require_defect: bool, data: VoteInput) -> None:
    """The project's text requirements: content for every answer, defect for a pick (it has a worst)."""
    if require_content and data.outcome in COUNTED_OUTCOMES and not data.content_text.strip():
        raise InvalidInput("this project needs content_text: say what the region really shows")
    if require_defect and data.outcome == "pick" and not data.defect_text.strip():
        raise InvalidInput("this project needs defect_text: say what is wrong in the worst candidate")


def _lock_task_for_vote(session: Session, task_id: int) -> Row[Any]:
    """The task's counters, its project's text requirements and its candidates, the task row locked."""
    stmt = _TASK_FOR_VOTE_LOCKED if _postgres(session) else _TASK_FOR_VOTE
    row = session.execute(stmt, {"tid": task_id}).first()
    if row is None:
        raise NotFound(f"task {task_id} does not exist")
    return row


def submit_vote(session: Session, *, task_id: int, user_id: int, data: VoteInput, now: datetime) -> Row[Any]:
    """Record an answer (or a skip) and return the new vote row.

    Replays are found after the fact: a submission id used before, or a second answer to the same
    task, fails here on the unique constraints of votes (or on the slot check, if the task filled up
    since); the caller rolls back and asks `earlier_answer` whether it was a replay (answer with the
    first vote) or a conflict. Checking first would cost every vote a query that almost never finds
    anything."""
    had_lease = _take_lease(session, task_id, user_id)
    task = _lock_task_for_vote(session, task_id)
    ids = _ids(task.candidate_ids)
    _validate(data, ids)
    _check_texts(task.require_content, task.require_defect, data)

    slots, count = task.slots_taken, task.vote_count
    if data.outcome == "skip":
        slots -= 1 if had_lease else 0
    elif not had_lease:
        if slots >= task.required_votes:
            raise Conflict(
                f"task {task_id} has no free slot: your lease expired and others filled it; "
                "ask for the next task"
            )
        slots += 1
    if data.outcome in COUNTED_OUTCOMES:
        count += 1
    vote = session.execute(
        _INSERT_VOTE,
        {
            "task_id": task_id,
            "user_id": user_id,
            "outcome": data.outcome,
            "best_candidate_id": data.best_candidate_id,
            "worst_candidate_id": data.worst_candidate_id,
            "content_text": data.content_text,
            "defect_text": data.defect_text,
            "shown_order": shown_order(task_id, user_id, ids),
            "lead_time_ms": data.lead_time_ms,
            "client_submission_id": data.client_submission_id,
            "created_at": now,
        },
    ).one()
    _set_counts(session, task_id, task.required_votes, slots, count)
    return vote


def _set_counts(session: Session, task_id: int, required_votes: int, slots: int, count: int) -> None:
    """Write the task's slots and counted answers (the row is locked); it is complete at k answers."""
    state = "complete" if count >= required_votes else "open"
    session.execute(_COUNT_VOTE, {"tid": task_id, "new_slots": slots, "new_count": count, "new_state": state})


def replace_vote(
    session: Session,
    *,
    task_id: int,
    user_id: int,
    replaces_submission_id: str,
    data: VoteInput,
    now: datetime,
    grace: timedelta = REPLACE_GRACE,
) -> tuple[Vote | Row[Any], bool]:
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
        # Unless the annotator answered the task otherwise since (a stale undo): then it is a Conflict.
        earlier_answer(session, task_id=task_id, user_id=user_id, data=data)
        return submit_vote(session, task_id=task_id, user_id=user_id, data=data, now=now), True
    task = _lock_task_for_vote(session, task_id)
    # Read again under the task lock: a concurrent replacement of the same vote has finished by now.
    old = session.scalars(stmt.execution_options(populate_existing=True)).first()
    if old is None or old.task_id != task_id:
        raise Conflict(f"submission {replaces_submission_id!r} is not your current answer to task {task_id}")
    if now - old.created_at > grace:
        raise Conflict(f"vote {old.id} is older than {grace.total_seconds():.0f} s: too late to undo it")
    _validate(data, _ids(task.candidate_ids))
    _check_texts(task.require_content, task.require_defect, data)

    slots, count = task.slots_taken, task.vote_count
    was_counted = old.outcome in COUNTED_OUTCOMES
    counted = data.outcome in COUNTED_OUTCOMES
    if counted and not was_counted:
        if slots >= task.required_votes:
            raise Conflict(f"task {task_id} was filled by others after you skipped it; your skip stays")
        slots, count = slots + 1, count + 1
    elif was_counted and not counted:
        slots, count = slots - 1, count - 1
    _set_counts(session, task_id, task.required_votes, slots, count)

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
    session.execute(_FREE_SLOTS, {"tid": task_id, "n": 1})
    return True
