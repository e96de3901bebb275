"""Handing out tasks and taking votes, safely under concurrency on PostgreSQL and SQLite.

A task wants ``required_votes`` answers. ``Task.slots_taken`` counts the accepted votes plus the live
leases; a lease reserves one slot for one annotator until it expires, so that two annotators never
fill the same last slot. `next` locks the task row it picks (FOR UPDATE SKIP LOCKED on PostgreSQL;
SQLite serialises writers with BEGIN IMMEDIATE), so the slot check and the lease are one atomic step.
Lock order is always lease rows before task rows, so reclaiming, voting and releasing cannot deadlock;
`next` locks the annotator's cursor row before either. The project row locks below (mark_reopened,
lock_new_task_ids, a `next` creating a cursor) may be taken after task rows: a `next` that holds the
project row waits for no other lock afterwards (it skips locked rows), so no cycle can form.

`next` and `vote` are what every annotator calls in a loop, so they are written as a handful of Core
statements on the tables (no ORM unit of work): a few round trips per request is what makes the loop
fast. Undo and the lookups after a failed vote, which are rare, load Vote rows through the ORM.

Where `next` starts looking (docs/decisions.md, "Task assignment", has the design and its proof).
Each annotator has a cursor per project (assign_cursors): every task id up to it has been looked at
for them (a scan may stop the cursor below tasks it read: RESCAN_LIMIT). `next` scans only the open
tasks above it, so its cost does not grow with the number of open tasks the annotator already
answered. What the cursor went past without the annotator holding or answering it is kept in
assign_rechecks, and `next` looks there first. The invariant, at every commit: every open task at or
below an annotator's cursor that they have neither answered, skipped nor leased has an
assign_rechecks row for them. Code outside this module keeps it by calling:

- `lock_new_task_ids(session, project_id)` before inserting tasks into a project, so that task ids
  become visible in increasing order (a cursor never goes past an id that commits later);
- `mark_reopened(session, project_id, task_ids)` after anything that makes a task open again or
  eligible again for someone who answered it: a complete task reopened (undo does it here; reviews
  would), or a vote deleted;
- `release_task` / `reclaim_expired_leases` to end a lease without an answer: never delete lease rows
  directly, because the annotator who held the lease needs a recheck row for the task.

Freeing a slot (a skip, a release, an expiry, undo of an answer) needs nothing more: an open task
that was full when a cursor went past it has a recheck row already.

Gold tasks (state "gold", dspo.services.gold) are never open: the invariant does not cover them, the
scan and the recheck rows never lease them (a recheck row of one is dropped like one of a complete
task), and `next` leases them by a separate pick (`_lease_gold`) when `gold_turn` says so. Turning
an open task into a gold one therefore needs no call here.
"""

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
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
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from dspo.errors import Conflict, InvalidInput, NotFound
from dspo.models import (
    AssignCursor,
    AssignRecheck,
    Candidate,
    Instance,
    Lease,
    Project,
    ProjectMember,
    Source,
    Task,
    Vote,
    VoteRevision,
)

COUNTED_OUTCOMES = ("pick", "tie", "all_bad")
OUTCOMES = (*COUNTED_OUTCOMES, "skip")
# How long after an answer its annotator may still replace it (undo). Longer than the page offers
# undo for, so that a replacement that waited in the browser during a short outage still goes in.
REPLACE_GRACE = timedelta(minutes=10)

tasks, leases, votes = Task.__table__, Lease.__table__, Vote.__table__
cursors, rechecks = AssignCursor.__table__, AssignRecheck.__table__
project_members = ProjectMember.__table__
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
        # Compared through coalesce so that no index on evaluation_id can serve it: SQLite's planner
        # otherwise takes that index for `IS NULL`, which holds for every candidate of every task
        # (120 ms per `next` and per `vote` at 1M tasks), instead of the few of this source.
        func.coalesce(candidates.c.evaluation_id, 0) == func.coalesce(tasks.c.evaluation_id, 0),
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
    # The order the annotator saw, when another tool showed the task (the Label Studio bridge); None:
    # the shuffled order of `shown_order`, which our own page shows.
    shown_order: list[int] | None = None


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
_RECLAIM = (
    delete(leases).where(leases.c.expires_at < bindparam("now")).returning(leases.c.task_id, leases.c.user_id)
)
_FREE_SLOTS = (
    update(tasks)
    .where(tasks.c.id == bindparam("tid"))
    .values(slots_taken=tasks.c.slots_taken - bindparam("n", type_=Integer))
    .returning(tasks.c.project_id)
)
_RECHECK = insert(rechecks)


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
    _TASK_VIEW.add_columns(leases.c.id.label("lease_id"))
    .where(
        leases.c.user_id == bindparam("user_id"),
        tasks.c.project_id == bindparam("project_id"),
        leases.c.expires_at >= bindparam("now"),
    )
    .subquery("held")
)
# `next`'s first statement: the project (no row: it does not exist), whether the caller is one of its
# members, and the caller's live leases in it, oldest first (one row of NULLs when they hold none).
_QUEUE = (
    select(
        projects.c.gold_rate,
        projects.c.gold_threshold,
        exists()
        .where(
            project_members.c.project_id == projects.c.id,
            project_members.c.user_id == bindparam("member_id"),
        )
        .label("is_member"),
        *(column for column in _HELD.c if column.name != "lease_id"),
    )
    .select_from(projects.outerjoin(_HELD, true()))
    .where(projects.c.id == bindparam("project_id"))
    .order_by(_HELD.c.lease_id)
    .limit(bindparam("limit", type_=Integer))
)
# SQLite: the same, with the annotator's cursor (NULL when they have none) and whether they have
# recheck rows. The write transaction holds the database from its first statement, so the cursor read
# here is the one `next` moves; on PostgreSQL `next` reads it under a row lock, later (_START_POSTGRES).
_QUEUE_SQLITE = _QUEUE.add_columns(
    cursors.c.last_task_id,
    exists()
    .where(rechecks.c.project_id == projects.c.id, rechecks.c.user_id == bindparam("user_id"))
    .label("has_rechecks"),
).outerjoin(cursors, (cursors.c.project_id == projects.c.id) & (cursors.c.user_id == bindparam("user_id")))
_LEASED = _TASK_VIEW.where(leases.c.task_id == bindparam("tid"), leases.c.user_id == bindparam("user_id"))

# `next`'s first statement after _HELD, on PostgreSQL: lock the annotator's cursor (so that their
# concurrent `next` calls take turns) and delete expired leases (of any project; lease rows that a
# vote or a release is consuming right now are skipped, so this waits for nobody). Always one row,
# plus one per reclaimed lease. Plain SQL: see _PICK_AND_LEASE.
_START_POSTGRES = text(
    """
    WITH cursor AS (
        SELECT last_task_id FROM assign_cursors
        WHERE project_id = :project_id AND user_id = :user_id
        FOR UPDATE
    ), gone AS (
        DELETE FROM leases WHERE id IN (
            SELECT id FROM leases WHERE expires_at < :now ORDER BY id FOR UPDATE SKIP LOCKED
        )
        RETURNING task_id, user_id
    )
    SELECT cursor.last_task_id, gone.task_id, gone.user_id
    FROM (SELECT 1) AS one LEFT JOIN cursor ON true LEFT JOIN gone ON true
    """
).bindparams(bindparam("now", type_=leases.c.expires_at.type))
# A cursor just created (or found created by a concurrent `next`), locked.
_CURSOR_LOCKED = (
    select(
        cursors.c.last_task_id,
        exists()
        .where(rechecks.c.project_id == bindparam("project_id"), rechecks.c.user_id == bindparam("user_id"))
        .label("has_rechecks"),
    )
    .where(cursors.c.project_id == bindparam("project_id"), cursors.c.user_id == bindparam("user_id"))
    .with_for_update(of=cursors)
)
# Creating a cursor waits for anyone reopening tasks of the project (mark_reopened) and makes them
# wait: they must see every cursor that may go past the tasks they reopen.
_PROJECT_FOR_NEW_CURSOR = (
    select(projects.c.id).where(projects.c.id == bindparam("project_id")).with_for_update(read=True)
)
# Taken by mark_reopened and lock_new_task_ids: conflicts with the lock above and with itself, not
# with the foreign-key checks of inserts (KEY SHARE).
_PROJECT_EXCLUSIVE = (
    select(projects.c.id).where(projects.c.id == bindparam("project_id")).with_for_update(key_share=True)
)

# SQLite: the transaction holds the database's write lock from its start (BEGIN IMMEDIATE), so the
# pick, the slot and the lease are atomic without row locks, and each step can be its own statement.
_UNTOUCHED = ~exists().where(
    votes.c.task_id == tasks.c.id, votes.c.user_id == bindparam("user_id")
) & ~exists().where(leases.c.task_id == tasks.c.id, leases.c.user_id == bindparam("user_id"))
_FREE = tasks.c.slots_taken < tasks.c.required_votes
_AFTER = bindparam("after", type_=Integer)
# When a scan read at most this many open tasks before its pick (full while others hold their slots,
# locked, or answered by the annotator already), the cursor stays just below the first of them instead
# of going past them with a recheck row for each one the annotator has not answered, and the next scan
# reads them again. In a team working in step, the tasks just above a cursor are full only until their
# leases turn into answers: a recheck row for each, written and deleted one `next` later, was 1.5 rows
# per answer in the 8-client loop. Past the limit the scan records them, so that its cost stays
# bounded.
RESCAN_LIMIT = 64
# Recheck rows count at or below the cursor only: above it, the scan sees the task anyway.
_PICK_RECHECK = (
    select(tasks.c.id)
    .where(
        tasks.c.id.in_(
            select(rechecks.c.task_id).where(
                rechecks.c.project_id == bindparam("project_id"),
                rechecks.c.user_id == bindparam("user_id"),
                rechecks.c.task_id <= _AFTER,
            )
        ),
        tasks.c.project_id == bindparam("project_id"),
        tasks.c.state == "open",
        _FREE,
        _UNTOUCHED,
    )
    .order_by(tasks.c.id)
    .limit(1)
)
# The recheck rows that need no more looking at: the task was just leased, is above the cursor, gone
# (or not in this project), complete (reopening it adds new rows), or answered, skipped or held by
# the annotator.
_DROP_RECHECKS = delete(rechecks).where(
    rechecks.c.project_id == bindparam("project_id"),
    rechecks.c.user_id == bindparam("user_id"),
    or_(
        rechecks.c.task_id == bindparam("picked", type_=Integer),
        rechecks.c.task_id > _AFTER,
        ~exists().where(
            tasks.c.id == rechecks.c.task_id,
            tasks.c.project_id == rechecks.c.project_id,
            tasks.c.state == "open",
            _UNTOUCHED,
        ),
    ),
)
# The open tasks above the cursor, in id order, read until the first one the annotator can take; the
# ones read before it are full, locked, or theirs already.
_SCAN = (
    select(tasks.c.id, (_FREE & _UNTOUCHED).label("eligible"), _UNTOUCHED.label("untouched"))
    .where(tasks.c.project_id == bindparam("project_id"), tasks.c.state == "open", tasks.c.id > _AFTER)
    .order_by(tasks.c.id)
)
# (Bound names other than the columns': an UPDATE reserves those for its SET clause.)
_ADVANCE = (
    update(cursors)
    .where(cursors.c.project_id == bindparam("in_project"), cursors.c.user_id == bindparam("for_user"))
    .values(last_task_id=func.max(cursors.c.last_task_id, bindparam("last", type_=Integer)))
)
_TAKE_SLOT = update(tasks).where(tasks.c.id == bindparam("tid")).values(slots_taken=tasks.c.slots_taken + 1)
_LEASE = insert(leases)

_ID_MAX = 2**63 - 1  # above every task id (BIGINT)

# PostgreSQL: the pick in one statement and one snapshot. The first task the annotator can take among
# their recheck rows at or below the cursor (`rechecked`), else above the cursor (`scanned`, not run
# when `rechecked` found one); its row locked, rows locked by others skipped. Then: take the slot and
# insert the lease. The open tasks the scan read before its pick (full, locked right now, or the
# caller's own) are counted up to RESCAN_LIMIT + 1 (`read`): at most RESCAN_LIMIT of them hold the
# cursor just below the first (`stay`); none, and the cursor moves to the task scanned. More: the
# statement says so (`overflow`) and _RECORD_PASSED writes their recheck rows. Drop the recheck rows
# that need no more looking at (as _DROP_RECHECKS); return the task leased (NULL if none), the
# cursor's new place and `overflow`. `read` re-reads the range `scanned` read, bounded by its pick so
# that the index scan stops there. Plain SQL: SQLAlchemy 2.1.9 loses a bound value of a CTE nested in
# an UPDATE CTE.
#
# PostgreSQL plans this statement again on a call when it finds its generic plan's estimated cost
# worse than the average of its custom plans', and planning it costs more than running it. So nothing
# in it has an estimate that moves with the votes table: when recording the passed tasks was part of
# it, their votes probes (5,000 rows estimated for an unbounded id range) made its cost jump from
# about 7,000 to 42,000 once the votes table had rows, and the custom plans averaged over an emptier
# table won for thousands of calls: 0.5 to 1.3 ms of planning per `next` in an 8-annotator loop. For
# the same reason the task's view is read by its own statement (_LEASED) rather than joined here.
#
# The votes probe ends in OFFSET 0, which keeps PostgreSQL from turning it into an anti-join: for an
# annotator with many answers the planner otherwise merges the scan with all their votes in task
# order, reading every vote below the cursor (20k answers: 11 ms instead of 0.1). The leases probe
# stays a join: the caller's leases are one or two rows, and as a per-row probe the planner would
# read the whole (small, much-rewritten) leases table for every task.
_UNTOUCHED_SQL = """
    AND NOT EXISTS (SELECT 1 FROM votes WHERE votes.task_id = tasks.id AND votes.user_id = :user_id OFFSET 0)
    AND NOT EXISTS (SELECT 1 FROM leases WHERE leases.task_id = tasks.id AND leases.user_id = :user_id)"""
_PICK_AND_LEASE = text(
    f"""
    WITH rechecked AS (
        SELECT id FROM tasks
        WHERE id IN (SELECT task_id FROM assign_rechecks
                     WHERE project_id = :project_id AND user_id = :user_id AND task_id <= :after)
          AND project_id = :project_id AND state = 'open' AND slots_taken < required_votes {_UNTOUCHED_SQL}
        ORDER BY id LIMIT 1
        FOR UPDATE SKIP LOCKED
    ), scanned AS (
        SELECT id FROM tasks
        WHERE project_id = :project_id AND state = 'open' AND id > :after
          AND slots_taken < required_votes {_UNTOUCHED_SQL}
          AND NOT EXISTS (SELECT 1 FROM rechecked)
        ORDER BY id LIMIT 1
        FOR UPDATE SKIP LOCKED
    ), picked AS (
        SELECT id FROM rechecked UNION ALL SELECT id FROM scanned
    ), taken AS (
        UPDATE tasks SET slots_taken = tasks.slots_taken + 1 FROM picked WHERE tasks.id = picked.id
        RETURNING tasks.id
    ), leased AS (
        INSERT INTO leases (task_id, user_id, expires_at, created_at)
        SELECT id, :user_id, :expires_at, :now FROM taken
        RETURNING task_id
    ), read AS (
        SELECT id FROM tasks
        WHERE project_id = :project_id AND state = 'open' AND id > :after
          AND id < COALESCE((SELECT id FROM scanned), {_ID_MAX})
          AND NOT EXISTS (SELECT 1 FROM rechecked)
        ORDER BY id LIMIT :rescan_limit + 1
    ), stay AS (
        SELECT min(id) - 1 AS below FROM read HAVING count(*) <= :rescan_limit
    ), advanced AS (
        UPDATE assign_cursors SET last_task_id = GREATEST(last_task_id, COALESCE(
            (SELECT below FROM stay), (SELECT id FROM scanned), :after))
        WHERE project_id = :project_id AND user_id = :user_id
        RETURNING last_task_id
    ), dropped AS (
        DELETE FROM assign_rechecks
        WHERE project_id = :project_id AND user_id = :user_id
          AND (task_id > :after OR task_id IN (SELECT id FROM rechecked)
               OR NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = assign_rechecks.task_id
                              AND tasks.project_id = :project_id AND tasks.state = 'open' {_UNTOUCHED_SQL}))
    )
    SELECT (SELECT task_id FROM leased) AS task_id,
           (SELECT last_task_id FROM advanced) AS cursor_after,
           (SELECT count(*) FROM read) > :rescan_limit AS overflow
    """
).bindparams(
    bindparam("expires_at", type_=leases.c.expires_at.type),
    bindparam("now", type_=leases.c.created_at.type),
    bindparam("after", type_=BigInteger),
    bindparam("rescan_limit", type_=Integer),
)
# After a pick whose scan read more than RESCAN_LIMIT open tasks: a recheck row for each one the caller
# neither answered nor holds, below `before` (the task leased; no bound when none was), and the cursor
# moved past them, to the last open task when none was leased. A later snapshot than the pick's: what
# changed in between is covered (docs/decisions.md, "Races").
_RECORD_PASSED = text(
    f"""
    WITH recorded AS (
        INSERT INTO assign_rechecks (project_id, user_id, task_id)
        SELECT :project_id, :user_id, id FROM tasks
        WHERE project_id = :project_id AND state = 'open' AND id > :after AND id < :before {_UNTOUCHED_SQL}
    )
    UPDATE assign_cursors SET last_task_id = GREATEST(last_task_id, (
        SELECT max(id) FROM tasks WHERE project_id = :project_id AND state = 'open' AND id < :before))
    WHERE project_id = :project_id AND user_id = :user_id
    RETURNING last_task_id
    """
).bindparams(bindparam("after", type_=BigInteger), bindparam("before", type_=BigInteger))
_TASK_FOR_VOTE = (
    select(
        tasks.c.project_id,
        tasks.c.state,
        tasks.c.required_votes,
        tasks.c.vote_count,
        tasks.c.slots_taken,
        tasks.c.kind,
        projects.c.require_content,
        projects.c.require_defect,
        CANDIDATE_IDS,
        # The membership check of a vote, in the statement that reads the task anyway.
        exists()
        .where(
            project_members.c.project_id == tasks.c.project_id,
            project_members.c.user_id == bindparam("member_id"),
        )
        .label("is_member"),
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


def _free_reclaimed(session: Session, reclaimed: list[tuple[int, int]]) -> None:
    """Free the slots of these (task, annotator) leases, just deleted, and give each annotator a
    recheck row for their task: their cursor went past it while they held it."""
    project_of = {}
    for task_id, n in sorted(Counter(task for task, _ in reclaimed).items()):
        project_of[task_id] = session.scalar(_FREE_SLOTS, {"tid": task_id, "n": n})
    session.execute(
        _RECHECK,
        [
            {"project_id": project_of[task], "user_id": user, "task_id": task}
            for task, user in sorted(reclaimed)
        ],
    )


def reclaim_expired_leases(session: Session, now: datetime) -> int:
    """Free the slots of leases that ran out; each expired lease is freed exactly once."""
    reclaimed = [(row.task_id, row.user_id) for row in session.execute(_RECLAIM, {"now": now})]
    if reclaimed:
        _free_reclaimed(session, reclaimed)
    return len(reclaimed)


def lock_new_task_ids(session: Session, project_id: int) -> None:
    """Call before inserting tasks into a project, in the same transaction. Task ids come from a
    sequence, so two transactions could commit them out of order, and a cursor that went past the
    higher id would never see the lower one. With this lock the transactions that add tasks to one
    project take turns, so the ids of a project become visible in increasing order."""
    session.execute(_PROJECT_EXCLUSIVE, {"project_id": project_id})


def mark_reopened(session: Session, project_id: int, task_ids: list[int]) -> None:
    """Call after making these tasks eligible again for annotators whose cursor may have gone past
    them: a complete task made open again, or a vote deleted. Every annotator with a cursor in the
    project who has no vote on a task gets a recheck row for it (rows for annotators who cannot take
    it are dropped by their next `next`). The project lock makes an annotator's first `next` in the
    project, which creates their cursor, either finish before (its cursor is seen here) or start
    after this transaction (it sees the tasks open)."""
    session.execute(_PROJECT_EXCLUSIVE, {"project_id": project_id})
    for task_id in sorted(task_ids):
        session.execute(
            insert(rechecks).from_select(
                ["project_id", "user_id", "task_id"],
                select(cursors.c.project_id, cursors.c.user_id, cast(bindparam("tid"), Integer)).where(
                    cursors.c.project_id == bindparam("project_id"),
                    ~exists().where(
                        votes.c.task_id == bindparam("tid"), votes.c.user_id == cursors.c.user_id
                    ),
                ),
            ),
            {"project_id": project_id, "tid": task_id},
        )


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


@dataclass
class _Cursor:
    """The annotator's cursor, locked for this transaction, and (SQLite) whether they have recheck
    rows, so that `next` can skip looking at them."""

    after: int
    has_rechecks: bool = True


@dataclass(frozen=True)
class Queue:
    """What `next` reads first (`read_queue`): the project's gold settings and the annotator's live
    leases in it, oldest first, up to the position asked for; on SQLite also their cursor (None when
    they have none yet, and always on PostgreSQL, where `next` reads it under a lock)."""

    project_id: int
    user_id: int
    now: datetime
    position: int
    gold_rate: float
    gold_threshold: float | None
    held: list[Row[Any]]
    cursor: _Cursor | None


def _start(session: Session, queue: Queue) -> _Cursor | None:
    """Lock (or create) the annotator's cursor and reclaim expired leases; None if the project does
    not exist."""
    params = {"project_id": queue.project_id, "user_id": queue.user_id, "now": queue.now}
    if _postgres(session):
        rows = session.execute(_START_POSTGRES, params).all()
        reclaimed = [(r.task_id, r.user_id) for r in rows if r.task_id is not None]
        if reclaimed:
            _free_reclaimed(session, reclaimed)
        if rows[0].last_task_id is not None:
            return _Cursor(rows[0].last_task_id)
    else:
        reclaimed = reclaim_expired_leases(session, queue.now)
        if queue.cursor is not None:
            # A reclaimed lease may have been the caller's, which gives them a recheck row.
            return _Cursor(queue.cursor.after, queue.cursor.has_rechecks or reclaimed > 0)

    if session.execute(_PROJECT_FOR_NEW_CURSOR, params).first() is None:
        return None
    dialect_insert = pg_insert if _postgres(session) else sqlite_insert
    session.execute(
        dialect_insert(cursors)
        .values(project_id=queue.project_id, user_id=queue.user_id, last_task_id=0)
        .on_conflict_do_nothing(index_elements=["project_id", "user_id"])
    )
    # Another `next` of the same annotator may have created it first and moved it on.
    row = session.execute(_CURSOR_LOCKED, params).one()
    return _Cursor(row.last_task_id, row.has_rechecks)


def read_queue(
    session: Session,
    *,
    project_id: int,
    user_id: int,
    now: datetime,
    position: int = 0,
    member_id: int | None = None,
) -> Queue:
    """`next`'s first statement. NotFound if the project does not exist or, with `member_id`, if that
    user is not one of its members (checked in the same statement)."""
    params = {
        "user_id": user_id,
        "project_id": project_id,
        "now": now,
        "limit": position + 1,
        "member_id": member_id,
    }
    postgres = _postgres(session)
    rows = session.execute(_QUEUE if postgres else _QUEUE_SQLITE, params).all()
    if not rows or (member_id is not None and not rows[0].is_member):
        suffix = "" if member_id is None else ", or you are not one of its members: ask an admin to add you"
        raise NotFound(f"project {project_id} does not exist{suffix}")
    first = rows[0]
    held = [row for row in rows if row.id is not None]
    cursor = None
    if not postgres and first.last_task_id is not None:
        cursor = _Cursor(first.last_task_id, first.has_rechecks)
    return Queue(project_id, user_id, now, position, first.gold_rate, first.gold_threshold, held, cursor)


def next_task(
    session: Session, *, project_id: int, user_id: int, now: datetime, lease_seconds: int, position: int = 0
) -> LeasedTask | None:
    """`read_queue` then `lease_from`: the task at `position` of the annotator's queue."""
    queue = read_queue(session, project_id=project_id, user_id=user_id, now=now, position=position)
    return lease_from(session, queue, lease_seconds=lease_seconds)


def lease_from(session: Session, queue: Queue, *, lease_seconds: int) -> LeasedTask | None:
    """The annotator's live leases in this project form a queue, oldest first; return the one at
    `queue.position`, leasing new tasks (the first open ones with a free slot that they have neither
    answered, skipped nor leased) until the queue is that long; None when there are not enough.

    Position 0 is the task to show now (the same one until it is answered); position 1 lets the web
    page lease and preload the task after it, so that the next task appears without a round trip.

    With the project's gold_rate above 0, each new lease is, with that probability (`gold_turn`), a
    gold task the annotator has neither answered nor holds, when one is left. Gold tasks are never
    open, so the cursor scan and its invariant never see them. A gold_rate of 0 adds no statement."""
    project_id, user_id, now = queue.project_id, queue.user_id, queue.now
    position, held = queue.position, queue.held
    if len(held) > position:
        return _leased_task(held[position])

    cursor = _start(session, queue)
    if cursor is None:
        return None
    gold_rate = queue.gold_rate
    params = {"user_id": user_id, "project_id": project_id}
    answered = session.scalar(_ANSWER_COUNT, params) + len(held) if gold_rate > 0 else 0
    leased = None
    for i in range(position + 1 - len(held)):
        leased = None
        if gold_rate > 0 and gold_turn(user_id, answered + i, gold_rate):
            leased = _lease_gold(
                session, project_id=project_id, user_id=user_id, now=now, seconds=lease_seconds
            )
        if leased is None:
            leased = _lease_new(
                session, cursor, project_id=project_id, user_id=user_id, now=now, seconds=lease_seconds
            )
        if leased is None:
            return None
    return leased


def gold_turn(user_id: int, answer_count: int, rate: float) -> bool:
    """Whether the annotator's lease after `answer_count` answers (and leases held) is a gold one: a
    draw seeded by (user, count), so the same history gives the same draws, with no visible pattern."""
    seed = hashlib.sha256(f"gold:{user_id}:{answer_count}".encode()).digest()
    return random.Random(seed).random() < rate


# The annotator's answers (skips included) in the project: the count that seeds `gold_turn`.
_ANSWER_COUNT = (
    select(func.count())
    .select_from(votes)
    .join(tasks, tasks.c.id == votes.c.task_id)
    .where(votes.c.user_id == bindparam("user_id"), tasks.c.project_id == bindparam("project_id"))
)
# The first gold task the annotator neither answered nor holds; another `next` of theirs waits on
# their cursor lock, and the lease's unique (task, user) constraint stops a second lease regardless.
_PICK_GOLD = (
    select(tasks.c.id)
    .where(tasks.c.project_id == bindparam("project_id"), tasks.c.state == "gold", _UNTOUCHED)
    .order_by(tasks.c.id)
    .limit(1)
)


def _lease_gold(
    session: Session, *, project_id: int, user_id: int, now: datetime, seconds: int
) -> LeasedTask | None:
    """Lease a gold task for the annotator (slot counted like any lease); None when none is left."""
    task_id = session.scalar(_PICK_GOLD, {"project_id": project_id, "user_id": user_id})
    if task_id is None:
        return None
    session.execute(_TAKE_SLOT, {"tid": task_id})
    session.execute(
        _LEASE,
        {
            "task_id": task_id,
            "user_id": user_id,
            "expires_at": now + timedelta(seconds=seconds),
            "created_at": now,
        },
    )
    return _leased_task(session.execute(_LEASED, {"tid": task_id, "user_id": user_id}).one())


def _lease_new(
    session: Session, cursor: _Cursor, *, project_id: int, user_id: int, now: datetime, seconds: int
) -> LeasedTask | None:
    """Lease the first task the annotator can take: from their recheck rows at or below the cursor,
    else the first above the cursor. Every task at or below the cursor that they can take has a
    recheck row, so this is the task the plain query (the first open task by id with a free slot that
    they neither answered nor hold) would give."""
    params = {
        "project_id": project_id,
        "user_id": user_id,
        "expires_at": now + timedelta(seconds=seconds),
        "now": now,
        "after": cursor.after,
        "rescan_limit": RESCAN_LIMIT,
    }
    if _postgres(session):
        task_id, cursor.after, overflow = session.execute(_PICK_AND_LEASE, params).one()
        if overflow:
            before = _ID_MAX if task_id is None else task_id
            cursor.after = session.scalar(_RECORD_PASSED, {**params, "before": before})
        if task_id is None:
            return None
    else:
        task_id = _pick_sqlite(session, cursor, params)
        if task_id is None:
            return None
        session.execute(_TAKE_SLOT, {"tid": task_id})
        session.execute(
            _LEASE,
            {"task_id": task_id, "user_id": user_id, "expires_at": params["expires_at"], "created_at": now},
        )
    return _leased_task(session.execute(_LEASED, {"tid": task_id, "user_id": user_id}).one())


def _pick_sqlite(session: Session, cursor: _Cursor, params: dict[str, Any]) -> int | None:
    """What _PICK_AND_LEASE and _RECORD_PASSED pick, record and move the cursor to, in separate steps."""
    if cursor.has_rechecks:
        task_id = session.scalar(_PICK_RECHECK, params)
        session.execute(_DROP_RECHECKS, {**params, "picked": task_id or 0})
        cursor.has_rechecks = task_id is not None  # what is left is full for now
        if task_id is not None:
            return task_id
    task_id, passed, last, first_read, read = None, [], cursor.after, 0, 0
    result = session.execute(_SCAN, params)
    for row in result:  # SQLite computes rows as they are fetched: this stops at the pick
        last = row.id
        if row.eligible:
            task_id = row.id
            break
        read += 1
        first_read = first_read or row.id
        if row.untouched:
            passed.append(
                {"project_id": params["project_id"], "user_id": params["user_id"], "task_id": row.id}
            )
    result.close()
    if 0 < read <= RESCAN_LIMIT:
        last = first_read - 1
    elif passed:
        session.execute(_RECHECK, passed)
        cursor.has_rechecks = True
    if last != cursor.after:
        session.execute(
            _ADVANCE, {"in_project": params["project_id"], "for_user": params["user_id"], "last": last}
        )
        cursor.after = last
    return task_id


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


def _check_texts(task: Row[Any], data: VoteInput) -> None:
    """The project's text requirements: content for every answer, defect for a pick (it has a worst).
    They describe regions for the dataset; a blind evaluation answer only says which output is better."""
    if task.kind == "evaluation":
        return
    if task.require_content and data.outcome in COUNTED_OUTCOMES and not data.content_text.strip():
        raise InvalidInput("this project needs content_text: say what the region really shows")
    if task.require_defect and data.outcome == "pick" and not data.defect_text.strip():
        raise InvalidInput("this project needs defect_text: say what is wrong in the worst candidate")


def _lock_task_for_vote(session: Session, task_id: int, member_of: int | None = None) -> Row[Any]:
    """The task's counters, its project's text requirements and its candidates, the task row locked;
    NotFound, as for a task that does not exist, unless user `member_of` (None: no check) is a member
    of its project."""
    stmt = _TASK_FOR_VOTE_LOCKED if _postgres(session) else _TASK_FOR_VOTE
    row = session.execute(stmt, {"tid": task_id, "member_id": member_of}).first()
    if row is None or (member_of is not None and not row.is_member):
        suffix = "" if member_of is None else ", or is in a project you are not a member of"
        raise NotFound(f"task {task_id} does not exist{suffix}")
    return row


def submit_vote(
    session: Session,
    *,
    task_id: int,
    user_id: int,
    data: VoteInput,
    now: datetime,
    allow_full: bool = False,
    check_member: bool = False,
) -> Row[Any]:
    """Record an answer (or a skip) and return the new vote row. `allow_full` takes an answer without a
    lease even when the task has no free slot: for answers given in another tool (the Label Studio
    bridge), which were given already and must not be lost. `check_member`: NotFound unless the user is
    a member of the task's project (checked with the task's row, no statement of its own); the caller
    rolls back what came before.

    Replays are found after the fact: a submission id used before, or a second answer to the same
    task, fails here on the unique constraints of votes (or on the slot check, if the task filled up
    since); the caller rolls back and asks `earlier_answer` whether it was a replay (answer with the
    first vote) or a conflict. Checking first would cost every vote a query that almost never finds
    anything."""
    had_lease = _take_lease(session, task_id, user_id)
    task = _lock_task_for_vote(session, task_id, user_id if check_member else None)
    ids = _ids(task.candidate_ids)
    _validate(data, ids)
    _check_texts(task, data)

    slots, count = task.slots_taken, task.vote_count
    if data.outcome == "skip":
        slots -= 1 if had_lease else 0
    elif not had_lease:
        # A gold task has no slots to run out of: every annotator may answer it once.
        if slots >= task.required_votes and not allow_full and task.state != "gold":
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
            "shown_order": data.shown_order or shown_order(task_id, user_id, ids),
            "lead_time_ms": data.lead_time_ms,
            "client_submission_id": data.client_submission_id,
            "created_at": now,
        },
    ).one()
    _set_counts(session, task_id, task.state, task.required_votes, slots, count)
    return vote


def _set_counts(
    session: Session, task_id: int, state: str, required_votes: int, slots: int, count: int
) -> None:
    """Write the task's slots and counted answers (the row is locked); it is complete at k answers,
    except a gold task, which stays gold however many answer it."""
    if state != "gold":
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
    allow_full: bool = False,
) -> tuple[Vote | Row[Any], bool]:
    """Undo: replace the answer recorded under `replaces_submission_id` by a new one (any outcome, a
    skip included). The vote row keeps its id and takes the new answer; the old one goes to
    vote_revisions. Slots follow the outcome: a counted answer that becomes a skip frees its slot, and
    a skip that becomes an answer needs a free one. Idempotent by the new client_submission_id. If
    nothing was recorded under the old id (it failed), the new answer is recorded as a plain vote.
    `allow_full` as in `submit_vote`."""
    replay = find_replay(session, task_id=task_id, user_id=user_id, data=data)
    if replay is not None:
        return replay, False
    stmt = select(Vote).where(Vote.user_id == user_id, Vote.client_submission_id == replaces_submission_id)
    if session.scalars(stmt).first() is None:
        # Unless the annotator answered the task otherwise since (a stale undo): then it is a Conflict.
        earlier_answer(session, task_id=task_id, user_id=user_id, data=data)
        vote = submit_vote(
            session, task_id=task_id, user_id=user_id, data=data, now=now, allow_full=allow_full
        )
        return vote, True
    task = _lock_task_for_vote(session, task_id)
    # Read again under the task lock: a concurrent replacement of the same vote has finished by now.
    old = session.scalars(stmt.execution_options(populate_existing=True)).first()
    if old is None or old.task_id != task_id:
        raise Conflict(f"submission {replaces_submission_id!r} is not your current answer to task {task_id}")
    if now - old.created_at > grace:
        raise Conflict(f"vote {old.id} is older than {grace.total_seconds():.0f} s: too late to undo it")
    _validate(data, _ids(task.candidate_ids))
    _check_texts(task, data)

    slots, count = task.slots_taken, task.vote_count
    was_counted = old.outcome in COUNTED_OUTCOMES
    counted = data.outcome in COUNTED_OUTCOMES
    if counted and not was_counted:
        if slots >= task.required_votes and not allow_full and task.state != "gold":
            raise Conflict(f"task {task_id} was filled by others after you skipped it; your skip stays")
        slots, count = slots + 1, count + 1
    elif was_counted and not counted:
        slots, count = slots - 1, count - 1
    _set_counts(session, task_id, task.state, task.required_votes, slots, count)
    if task.state == "complete" and count < task.required_votes:
        # Open again: cursors went past it while it was complete.
        mark_reopened(session, task.project_id, [task_id])

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
    if data.shown_order:
        old.shown_order = data.shown_order
    old.client_submission_id = data.client_submission_id
    old.created_at = now
    session.flush()
    return old, True


def release_task(session: Session, *, task_id: int, user_id: int) -> bool:
    """Give a leased task back without answering; False if the annotator held no lease on it."""
    if not _take_lease(session, task_id, user_id):
        return False
    project_id = session.scalar(_FREE_SLOTS, {"tid": task_id, "n": 1})
    # Their cursor went past the task while they held it: `next` must offer it to them again.
    session.execute(_RECHECK, {"project_id": project_id, "user_id": user_id, "task_id": task_id})
    return True


def release_user_leases(session: Session, user_id: int, project_id: int | None = None) -> int:
    """Give back every lease of a user (in one project, or in all), freeing their slots: for a member
    removed from a project or a deactivated user. Like an expiry, each task gets a recheck row for
    them, so that it is offered again if they come back. Returns how many; the caller commits."""
    stmt = delete(leases).where(leases.c.user_id == user_id)
    if project_id is not None:
        stmt = stmt.where(leases.c.task_id.in_(select(tasks.c.id).where(tasks.c.project_id == project_id)))
    released = [(task_id, user_id) for task_id in session.scalars(stmt.returning(leases.c.task_id))]
    if released:
        _free_reclaimed(session, released)
    return len(released)
