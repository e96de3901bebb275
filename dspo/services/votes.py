"""The annotator's loop over dspo.assign: lease the next task, answer it (or skip, undo, release), and
read the answers of a task. `lease_next` and `record_vote` are what every annotator calls in a loop:
they add no database round trip to the statements of dspo.assign but the COMMIT."""

from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dspo import assign
from dspo.db import utcnow
from dspo.errors import Conflict, DspoError, NotFound
from dspo.metrics import TASKS_LEASED, VOTES_ACCEPTED
from dspo.models import Vote
from dspo.services import gold, members
from dspo.services.projects import get_project
from dspo.services.tokens import Principal


def lease_next(
    session: Session, *, project_id: int, user: Principal, lease_seconds: int, position: int = 0
) -> assign.LeasedTask | None:
    """The task at `position` of the annotator's queue of leases (see assign.lease_from); None when
    nothing is left for them, NotFound for a project that does not exist or that they are not a
    member of (checked by assign.read_queue's statement: no statement of its own). In a project that
    serves gold tasks (gold_rate above 0), an annotator paused by their gold accuracy gets Forbidden
    with the reason (dspo.services.gold), and some of the new leases are gold tasks."""
    queue = assign.read_queue(
        session,
        project_id=project_id,
        user_id=user.id,
        now=utcnow(),
        position=position,
        member_id=None if members.sees_every_project(user) else user.id,
    )
    if queue.gold_rate > 0 and queue.gold_threshold is not None:  # no pause without a threshold
        gold.require_not_paused(session, get_project(session, project_id), user.id)
    task = assign.lease_from(session, queue, lease_seconds=lease_seconds)
    session.commit()
    if task is not None:
        TASKS_LEASED.inc()
    return task


def record_vote(
    session: Session,
    *,
    task_id: int,
    user: Principal,
    data: assign.VoteInput,
    replaces_submission_id: str | None = None,
) -> tuple[Vote | Row[Any], bool]:
    """Record an answer (or replace an earlier one: undo) and return (vote, created). A replay of a
    submission already recorded returns its vote with created False; a different second answer to the
    same task, or a reused submission id, is a Conflict. Only a member of the task's project may: for
    anyone else the task does not exist (NotFound), whatever they sent."""
    user_id = user.id
    try:
        if replaces_submission_id:
            # Undo is rare: its own membership query. A new answer's rides on the task's row.
            members.require_task(session, user, task_id)
            vote, created = assign.replace_vote(
                session,
                task_id=task_id,
                user_id=user_id,
                replaces_submission_id=replaces_submission_id,
                data=data,
                now=utcnow(),
            )
        else:
            vote = assign.submit_vote(
                session,
                task_id=task_id,
                user_id=user_id,
                data=data,
                now=utcnow(),
                check_member=not members.sees_every_project(user),
            )
            created = True
        session.commit()
        if created:
            VOTES_ACCEPTED.labels(data.outcome).inc()
        return vote, created
    except NotFound:
        session.rollback()
        raise
    except (DspoError, IntegrityError) as failure:
        # A replayed submission (a client retry, maybe racing its original) or a second answer to the
        # same task fails on the unique constraints of votes or on the slot check: say which, and
        # answer a replay with the vote it made. An undo refused for its own reasons (too late, filled
        # by others) is explained by a replay of itself only.
        session.rollback()
        replace_refused = replaces_submission_id is not None and isinstance(failure, DspoError)
        explain = assign.find_replay if replace_refused else assign.earlier_answer
        try:
            replayed = explain(session, task_id=task_id, user_id=user_id, data=data)
        finally:
            session.commit()  # the lookup only read: end its transaction (on SQLite, the write lock)
        if replayed is None:
            raise
        return replayed, False


def release(session: Session, *, task_id: int, user: Principal) -> None:
    """Give back a leased task unanswered; Conflict if the annotator holds no lease on it."""
    members.require_task(session, user, task_id)
    if not assign.release_task(session, task_id=task_id, user_id=user.id):
        raise Conflict(f"you hold no lease on task {task_id}")
    session.commit()


def task_votes(session: Session, task_id: int, *, user: Principal) -> list[Vote]:
    """Admins, and reviewers of the task's project, see every vote on the task; annotators only their
    own."""
    members.require_task(session, user, task_id)
    stmt = select(Vote).where(Vote.task_id == task_id).order_by(Vote.id)
    if not members.sees_every_answer(user):
        stmt = stmt.where(Vote.user_id == user.id)
    return list(session.scalars(stmt))
