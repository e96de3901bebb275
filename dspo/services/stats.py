"""Counts for people: a project's statistics for admins, an annotator's progress, the progress of every
project, and the latest descriptions annotators typed. Read-only."""

from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy import Row, case, exists, func, select
from sqlalchemy.orm import Session

from dspo.db import utcnow
from dspo.models import Job, Lease, Source, Task, User, Vote
from dspo.services.projects import get_project


@dataclass
class AnnotatorCount:
    user_id: int
    username: str
    votes: int
    skips: int


@dataclass
class ProjectStats:
    project_id: int
    sources_by_state: dict[str, int]
    tasks_by_state: dict[str, int]
    tasks_total: int
    votes: int
    skips: int
    votes_by_outcome: dict[str, int]
    live_leases: int
    annotators: list[AnnotatorCount]
    jobs_by_state: dict[str, int]


@dataclass
class Progress:
    done_today: int
    done_total: int
    left_for_you: int
    votes_left: int
    ms_per_task: float | None


@dataclass
class ProjectProgress:
    tasks: int = 0
    complete: int = 0
    votes: int = 0
    wanted: int = 0


def _count_by(session: Session, column, *where) -> dict[str, int]:  # type: ignore[no-untyped-def]
    stmt = select(column, func.count()).where(*where).group_by(column)
    return {str(key): n for key, n in session.execute(stmt)}


def project_stats(session: Session, project_id: int) -> ProjectStats:
    get_project(session, project_id)
    in_project = Task.project_id == project_id
    votes_by_outcome = _count_by(session, Vote.outcome, Vote.task_id == Task.id, in_project)
    per_user = session.execute(
        select(User.id, User.username, Vote.outcome, func.count())
        .join(Vote, Vote.user_id == User.id)
        .join(Task, Task.id == Vote.task_id)
        .where(in_project)
        .group_by(User.id, User.username, Vote.outcome)
    )
    annotators: dict[int, AnnotatorCount] = {}
    for user_id, username, outcome, n in per_user:
        entry = annotators.setdefault(user_id, AnnotatorCount(user_id, username, votes=0, skips=0))
        if outcome == "skip":
            entry.skips += n
        else:
            entry.votes += n
    tasks_by_state = _count_by(session, Task.state, in_project)
    live_leases = session.scalar(
        select(func.count())
        .select_from(Lease)
        .join(Task, Task.id == Lease.task_id)
        .where(in_project, Lease.expires_at >= utcnow())
    )
    return ProjectStats(
        project_id=project_id,
        sources_by_state=_count_by(session, Source.state, Source.project_id == project_id),
        tasks_by_state=tasks_by_state,
        tasks_total=sum(tasks_by_state.values()),
        votes=sum(n for outcome, n in votes_by_outcome.items() if outcome != "skip"),
        skips=votes_by_outcome.get("skip", 0),
        votes_by_outcome=votes_by_outcome,
        live_leases=live_leases or 0,
        annotators=sorted(annotators.values(), key=lambda a: a.user_id),
        jobs_by_state=_count_by(session, Job.state, Job.project_id == project_id),
    )


def annotator_progress(session: Session, project_id: int, user_id: int, since: datetime | None) -> Progress:
    """An annotator's answers today (since `since`, default UTC midnight) and in all, what is left for
    them and for everyone, and their mean time per task."""
    get_project(session, project_id)
    now = utcnow()
    since = datetime.combine(now.date(), time(), tzinfo=UTC) if since is None else since
    mine = (Vote.user_id == user_id, Vote.task_id == Task.id, Task.project_id == project_id)
    done_total = session.scalar(select(func.count()).select_from(Vote).where(*mine)) or 0
    done_today, mean_ms = session.execute(
        select(func.count(), func.avg(Vote.lead_time_ms)).where(*mine, Vote.created_at >= since)
    ).one()
    answered = exists().where(Vote.task_id == Task.id, Vote.user_id == user_id)
    left_for_you = session.scalar(
        select(func.count()).where(Task.project_id == project_id, Task.state == "open", ~answered)
    )
    votes_left = session.scalar(
        select(func.coalesce(func.sum(Task.required_votes - Task.vote_count), 0)).where(
            Task.project_id == project_id, Task.state == "open"
        )
    )
    return Progress(
        done_today=done_today,
        done_total=done_total,
        left_for_you=left_for_you or 0,
        votes_left=votes_left or 0,
        ms_per_task=float(mean_ms) if mean_ms is not None else None,
    )


def open_tasks_left(session: Session, user_id: int) -> dict[int, int]:
    """Open tasks per project that this user has neither answered nor skipped."""
    answered = exists().where(Vote.task_id == Task.id, Vote.user_id == user_id)
    rows = session.execute(
        select(Task.project_id, func.count()).where(Task.state == "open", ~answered).group_by(Task.project_id)
    )
    return {project_id: n for project_id, n in rows}


def projects_progress(session: Session, project_id: int | None = None) -> dict[int, ProjectProgress]:
    """Per project (or for one): tasks, complete tasks, answers recorded and answers wanted."""
    stmt = select(
        Task.project_id,
        func.count(),
        func.sum(case((Task.state == "complete", 1), else_=0)),
        func.sum(Task.vote_count),
        func.sum(Task.required_votes),
    ).group_by(Task.project_id)
    if project_id is not None:
        stmt = stmt.where(Task.project_id == project_id)
    return {
        pid: ProjectProgress(n, int(done or 0), int(votes or 0), int(wanted or 0))
        for pid, n, done, votes, wanted in session.execute(stmt)
    }


def recent_descriptions(session: Session, project_id: int, limit: int = 50) -> list[Row[Any]]:
    """The latest answers that came with a text, newest first: (Vote, username) rows."""
    return list(
        session.execute(
            select(Vote, User.username)
            .join(User, User.id == Vote.user_id)
            .join(Task, Task.id == Vote.task_id)
            .where(Task.project_id == project_id, (Vote.content_text != "") | (Vote.defect_text != ""))
            .order_by(Vote.id.desc())
            .limit(limit)
        ).all()
    )
