"""Label Studio annotations becoming votes here: created, updated and deleted, from the webhook or
from `sync`, each applied exactly once.

One `LabelStudioAnswer` row per annotation id holds what was last applied (a digest of its result,
Label Studio's `updated_at`), so a repeated delivery changes nothing, an older one is ignored, an
update replaces the vote (the old answer goes to vote_revisions, as an undo on our page does), and a
delete withdraws the vote: it becomes a skip, which never counts, and the row stays as a tombstone.
An answer that breaks a rule is kept as `rejected` with the reason, never dropped, and holds no vote.

Answers given in Label Studio were given already, so they are taken even when the task has its k
answers (assign's `allow_full`); Label Studio's own overlap setting decides who answers what."""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dspo import assign
from dspo.db import utcnow
from dspo.errors import DspoError
from dspo.labelstudio.config import CANDIDATES_KEY, TASK_ID_KEY, Answer, AnswerRejected, read_answer
from dspo.models import LabelStudioAnswer, Task, User, Vote
from dspo.services.users import check_username

# Label Studio keeps annotations editable for ever, so an update replaces the vote however old it is.
NO_GRACE_LIMIT = timedelta(days=365 * 1000)
SYNC_BATCH = 200  # annotations applied per transaction by `sync`
# Users created on first sight cannot log in here until an admin gives them a password: this is not
# an argon2 hash, so every password fails against it.
NO_PASSWORD = "!created by the Label Studio bridge: set a password to log in here"


@dataclass(frozen=True)
class AnnotationEvent:
    """One annotation as Label Studio describes it (webhook payload or export)."""

    annotation_id: int
    task_data: dict[str, Any]
    ls_user_id: int | None
    email: str  # "" while the bridge does not know the Label Studio user yet (see LabelStudioLink)
    result: list[Any] = field(default_factory=list)
    was_cancelled: bool = False
    ls_task_id: int | None = None
    updated_at: datetime | None = None


def result_digest(result: list[Any], was_cancelled: bool) -> str:
    canonical = json.dumps([result, was_cancelled], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _answer_row(session: Session, project_id: int, annotation_id: int) -> LabelStudioAnswer | None:
    stmt = select(LabelStudioAnswer).where(
        LabelStudioAnswer.project_id == project_id, LabelStudioAnswer.annotation_id == annotation_id
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()  # concurrent deliveries of one annotation apply one after the other
    return session.scalars(stmt).first()


def is_id(value: Any) -> bool:
    """An id that fits the BIGINT columns (ids in payloads come from outside)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2**63 - 1


def _task_of(session: Session, project_id: int, data: dict[str, Any]) -> tuple[int, list[int]]:
    """Our task id and the candidate order the annotator saw, from the Label Studio task's data."""
    task_id, order = data.get(TASK_ID_KEY), data.get(CANDIDATES_KEY)
    if not is_id(task_id) or not (isinstance(order, list) and all(is_id(c) for c in order)):
        raise AnswerRejected(
            f"the Label Studio task has no {TASK_ID_KEY!r} and {CANDIDATES_KEY!r}: it was not pushed by "
            "`dspo labelstudio push`"
        )
    task = session.get(Task, task_id)
    if task is None or task.project_id != project_id:
        raise AnswerRejected(f"task {task_id} is not a task of project {project_id} here")
    return task_id, order


def _user_for(session: Session, email: str) -> User:
    """The user whose name is this e-mail address, created as an annotator on first sight."""
    username = email.strip().lower()
    try:
        check_username(username)
    except DspoError as exc:
        raise AnswerRejected(f"the annotator's e-mail {email!r} cannot be a user name here: {exc}") from None
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None:
        try:
            with session.begin_nested():
                user = User(username=username, password_hash=NO_PASSWORD, role="annotator")
                session.add(user)
        except IntegrityError:  # created at the same moment by another delivery
            user = session.scalars(select(User).where(User.username == username)).one()
    if not user.is_active:
        raise AnswerRejected(f"user {username!r} is deactivated here")
    return user


def _current_vote(session: Session, row: LabelStudioAnswer, task_id: int, user_id: int) -> Vote | None:
    """The vote that this answer replaces: its own, or the user's skip of the task; AnswerRejected if
    the user answered the task here already in another way (our page, another annotation)."""
    if row.vote_id is not None and row.state == "accepted":
        return session.get(Vote, row.vote_id)
    vote = session.scalars(select(Vote).where(Vote.task_id == task_id, Vote.user_id == user_id)).first()
    if vote is None:
        return None
    owner = session.scalars(
        select(LabelStudioAnswer.annotation_id).where(
            LabelStudioAnswer.vote_id == vote.id,
            LabelStudioAnswer.state == "accepted",
            LabelStudioAnswer.id != row.id,
        )
    ).first()
    if owner is not None:
        raise AnswerRejected(f"this user answered task {task_id} already (Label Studio annotation {owner})")
    if vote.outcome != "skip":
        raise AnswerRejected(f"this user answered task {task_id} already on this server (vote {vote.id})")
    return vote  # a skip (here, or a withdrawn answer): the new answer replaces it


def _write_vote(
    session: Session, row: LabelStudioAnswer, current: Vote | None, answer: Answer, order: list[int]
) -> int:
    """Record `answer` as the vote of this row (a new vote, or a revision of `current`); its id."""
    data = assign.VoteInput(
        outcome=answer.outcome,
        client_submission_id=f"ls-{row.annotation_id}-{row.revision}",
        best_candidate_id=answer.best_candidate_id,
        worst_candidate_id=answer.worst_candidate_id,
        content_text=answer.content_text,
        defect_text=answer.defect_text,
        shown_order=order,
    )
    assert row.task_id is not None and row.user_id is not None
    if current is None:
        vote = assign.submit_vote(
            session, task_id=row.task_id, user_id=row.user_id, data=data, now=utcnow(), allow_full=True
        )
        return vote.id
    replaced, _ = assign.replace_vote(
        session,
        task_id=row.task_id,
        user_id=row.user_id,
        replaces_submission_id=current.client_submission_id,
        data=data,
        now=utcnow(),
        grace=NO_GRACE_LIMIT,
        allow_full=True,
    )
    return replaced.id


def _withdraw(session: Session, row: LabelStudioAnswer) -> None:
    """Make this row's vote a skip (kept, with the answer in vote_revisions); it no longer counts."""
    vote = session.get(Vote, row.vote_id) if row.vote_id is not None and row.state == "accepted" else None
    if vote is None or vote.outcome == "skip":
        return
    _write_vote(session, row, vote, Answer("skip", None, None, "", ""), list(vote.shown_order))


def apply_annotation(session: Session, project_id: int, event: AnnotationEvent) -> LabelStudioAnswer:
    """Apply a created or updated annotation (idempotent) and commit; the row says what became of it."""
    return _retrying(session, lambda: _apply_annotation(session, project_id, event))


def apply_deletion(session: Session, project_id: int, annotation_id: int) -> LabelStudioAnswer:
    """An annotation deleted in Label Studio: withdraw its vote and keep the row as a tombstone."""
    return _retrying(session, lambda: _apply_deletion(session, project_id, annotation_id))


def apply_in_batches(
    session: Session, project_id: int, changes: list[AnnotationEvent | int], batch: int = SYNC_BATCH
) -> list[str]:
    """Apply many annotations (events) and deletions (annotation ids), one commit per batch, and
    return what became of each (accepted | rejected | deleted): `sync` applies thousands, and a commit
    per answer would be most of its time. A batch that runs into a concurrent delivery of one of its
    annotations (a unique constraint) is rolled back and applied one by one instead."""
    states: list[str] = []
    for start in range(0, len(changes), batch):
        chunk = changes[start : start + batch]
        try:
            chunk_states = [_apply_change(session, project_id, change).state for change in chunk]
            session.commit()
        except IntegrityError:
            session.rollback()
            chunk_states = [
                _retrying(session, lambda change=change: _apply_change(session, project_id, change)).state
                for change in chunk
            ]
        states += chunk_states
    return states


def _apply_change(session: Session, project_id: int, change: AnnotationEvent | int) -> LabelStudioAnswer:
    if isinstance(change, int):
        return _apply_deletion(session, project_id, change)
    return _apply_annotation(session, project_id, change)


def _retrying(session: Session, apply: Callable[[], LabelStudioAnswer]) -> LabelStudioAnswer:
    """Run `apply` and commit; once more if a concurrent delivery of the same annotation (the webhook
    and `sync` at the same moment) inserted its row first: the second run then sees that row."""
    try:
        row = apply()
        session.commit()
    except IntegrityError:
        session.rollback()
        row = apply()
        session.commit()
    return row


def _apply_annotation(session: Session, project_id: int, event: AnnotationEvent) -> LabelStudioAnswer:
    digest = result_digest(event.result, event.was_cancelled)
    row = _answer_row(session, project_id, event.annotation_id)
    if row is not None and (
        row.state == "deleted"
        or (row.result_sha256 == digest and row.user_id is not None)
        or (row.ls_updated_at and event.updated_at and event.updated_at < row.ls_updated_at)
    ):
        return row  # a tombstone, a repeat, or an older version than the one applied
    if row is None:
        row = LabelStudioAnswer(
            project_id=project_id, annotation_id=event.annotation_id, state="rejected", revision=0
        )
        session.add(row)
    else:
        row.revision += 1
    row.ls_task_id, row.ls_user_id, row.email = event.ls_task_id, event.ls_user_id, event.email
    row.result = event.result
    row.result_sha256, row.ls_updated_at, row.changed_at = digest, event.updated_at, utcnow()
    session.flush()  # outside the savepoint below, so that a rolled-back vote leaves this row alone
    try:
        task_id, order = _task_of(session, project_id, event.task_data)
        row.task_id = task_id
        if not event.email:
            raise AnswerRejected(
                f"Label Studio user {event.ls_user_id} is not known here yet (they joined after the last "
                "push or sync): the next `dspo labelstudio sync` applies this answer"
            )
        row.user_id = _user_for(session, event.email).id
        answer = read_answer(event.result, order, was_cancelled=event.was_cancelled)
        session.flush()
        with session.begin_nested():
            vote_id = _write_vote(
                session, row, _current_vote(session, row, task_id, row.user_id), answer, order
            )
        row.vote_id, row.state, row.reason = vote_id, "accepted", ""
    except (AnswerRejected, DspoError) as exc:
        # The savepoint undid any part of a new vote; an earlier accepted one is withdrawn.
        _withdraw(session, row)
        reason = exc.message if isinstance(exc, DspoError) else str(exc)
        row.state, row.reason = "rejected", reason.replace("\x00", "")  # PostgreSQL text takes no NUL
    return row


def _apply_deletion(session: Session, project_id: int, annotation_id: int) -> LabelStudioAnswer:
    row = _answer_row(session, project_id, annotation_id)
    if row is None:
        row = LabelStudioAnswer(
            project_id=project_id, annotation_id=annotation_id, state="deleted", revision=0
        )
        session.add(row)
    elif row.state != "deleted":
        row.revision += 1
        _withdraw(session, row)
        row.state, row.reason, row.changed_at = "deleted", "", utcnow()
    session.flush()
    return row
