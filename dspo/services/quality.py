"""Quality per annotator for a project: the answers are read once, ordered by task, and the statistics
of dspo.quality_stats are computed from them. Evaluation rounds' answers (A/B comparisons) and skips are
left out."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from dspo.aggregate import newest_vote_id
from dspo.errors import Forbidden
from dspo.models import Candidate, Task, User, Vote
from dspo.quality_stats import (
    AlphaWindow,
    Answer,
    Positions,
    PositionTest,
    agreement_with_others,
    alpha,
    alpha_windows,
    histogram,
    position_test,
)
from dspo.services import gold
from dspo.services.members import require_project, sees_every_answer
from dspo.services.projects import get_project
from dspo.services.tokens import Principal

ALPHA_WINDOW_TASKS = 50  # pairable tasks per point of the alpha curve
LEAD_TIME_EDGES_MS = (0, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000)


def answers(session: Session, project_id: int, max_vote_id: int) -> Iterator[Answer]:
    """The project's non-skip answers up to `max_vote_id`, ordered by task, then by vote."""
    best, worst = aliased(Candidate), aliased(Candidate)
    rows = session.execute(
        select(
            Vote.id,
            Vote.task_id,
            Vote.user_id,
            Vote.outcome,
            Vote.best_candidate_id,
            Vote.worst_candidate_id,
            best.position,
            worst.position,
            Vote.shown_order,
            Vote.lead_time_ms,
        )
        .join(Task, Task.id == Vote.task_id)
        .outerjoin(best, best.id == Vote.best_candidate_id)
        .outerjoin(worst, worst.id == Vote.worst_candidate_id)
        .where(
            Task.project_id == project_id,
            Task.evaluation_id.is_(None),
            Vote.id <= max_vote_id,
            Vote.outcome != "skip",
        )
        .order_by(Vote.task_id, Vote.id)
        .execution_options(yield_per=1000)
    )
    for row in rows:
        yield Answer(*row[:8], shown_order=tuple(row[8] or ()), lead_time_ms=row[9])


def _usernames(session: Session, user_ids: set[int]) -> dict[int, str]:
    if not user_ids:
        return {}
    rows = session.execute(select(User.id, User.username).where(User.id.in_(user_ids)))
    return {user_id: name for user_id, name in rows}


@dataclass
class AnnotatorQuality:
    """One row of the per-annotator table (a new measure is one more field here and one more column)."""

    user_id: int
    username: str
    positions: Positions
    answers: int = 0
    picks: int = 0
    shared_tasks: int = 0
    best_agreement: float | None = None
    best_tasks: int = 0
    worst_agreement: float | None = None
    worst_tasks: int = 0
    timed_answers: int = 0  # answers whose lead time is known
    fast_answers: int = 0  # of those, faster than the project's min_lead_time_ms
    gold_answers: int = 0  # scored answers to gold tasks (dspo.services.gold), skips left out
    gold_correct: int = 0

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_answers if self.gold_answers else None

    @property
    def fast_share(self) -> float | None:
        return self.fast_answers / self.timed_answers if self.timed_answers else None

    @property
    def best_positions(self) -> PositionTest:
        return position_test(self.positions.best)

    @property
    def worst_positions(self) -> PositionTest:
        return position_test(self.positions.worst)


@dataclass
class QualityReport:
    project_id: int
    max_vote_id: int
    min_lead_time_ms: int
    n_candidates: int
    alpha_best: float | None
    alpha_worst: float | None
    window_tasks: int
    alpha_windows: list[AlphaWindow]
    best_positions: PositionTest
    worst_positions: PositionTest
    lead_time_edges_ms: list[int]
    lead_time_counts: list[int]
    annotators: list[AnnotatorQuality] = field(default_factory=list)


def report(session: Session, project_id: int, window_tasks: int = ALPHA_WINDOW_TASKS) -> QualityReport:
    """Every quality measure of the project, over its answers so far."""
    project = get_project(session, project_id)
    max_vote_id = newest_vote_id(session, project_id)
    found = list(answers(session, project_id, max_vote_id))
    floor, n = project.min_lead_time_ms, project.n_candidates

    rows: dict[int, AnnotatorQuality] = {}
    everyone = Positions(n)
    for answer in found:
        row = rows.get(answer.user_id)
        if row is None:
            row = rows[answer.user_id] = AnnotatorQuality(answer.user_id, "", Positions(n))
        row.answers += 1
        row.picks += answer.outcome == "pick"
        row.positions.add(answer)
        everyone.add(answer)
        if answer.lead_time_ms is not None:
            row.timed_answers += 1
            row.fast_answers += answer.lead_time_ms < floor
    for user_id, counts in agreement_with_others(found).items():
        row = rows[user_id]
        row.shared_tasks, row.best_tasks, row.worst_tasks = (
            counts.shared_tasks,
            counts.best_tasks,
            counts.worst_tasks,
        )
        row.best_agreement, row.worst_agreement = counts.best, counts.worst
    for score in gold.scores(session, project_id):
        row = rows.get(score.user_id)
        if row is None:
            row = rows[score.user_id] = AnnotatorQuality(score.user_id, "", Positions(n))
        row.gold_answers, row.gold_correct = score.answered, score.correct
    for user_id, name in _usernames(session, set(rows)).items():
        rows[user_id].username = name

    alpha_best, alpha_worst = alpha(found)
    edges = sorted({*LEAD_TIME_EDGES_MS, floor})  # the floor is a bin edge, so the chart can mark it
    return QualityReport(
        project_id=project_id,
        max_vote_id=max_vote_id,
        min_lead_time_ms=floor,
        n_candidates=n,
        alpha_best=alpha_best,
        alpha_worst=alpha_worst,
        window_tasks=window_tasks,
        alpha_windows=alpha_windows(found, window_tasks),
        best_positions=position_test(everyone.best),
        worst_positions=position_test(everyone.worst),
        lead_time_edges_ms=edges,
        lead_time_counts=histogram((a.lead_time_ms for a in found if a.lead_time_ms is not None), edges),
        annotators=sorted(rows.values(), key=lambda r: r.username),
    )


def report_for(session: Session, user: Principal, project_id: int) -> QualityReport:
    """The report, for admins and the project's reviewers: it shows every annotator's answers. Others
    who are members get Forbidden; non-members NotFound, as for any project they cannot see."""
    require_project(session, user, project_id)
    if not sees_every_answer(user):
        raise Forbidden("the quality report is for admins and the project's reviewers")
    return report(session, project_id)


def agreement(session: Session, project_id: int) -> dict[str, Any]:
    """The agreement part of the report: alpha over the best and the worst choices, and each
    annotator's leave-one-out agreement with the number of tasks it rests on."""
    found = report(session, project_id)
    return {
        "project_id": project_id,
        "max_vote_id": found.max_vote_id,
        "alpha_best": found.alpha_best,
        "alpha_worst": found.alpha_worst,
        "annotators": [
            {
                "user_id": row.user_id,
                "username": row.username,
                "picks": row.picks,
                "shared_tasks": row.shared_tasks,
                "best_agreement": row.best_agreement,
                "best_tasks": row.best_tasks,
                "worst_agreement": row.worst_agreement,
                "worst_tasks": row.worst_tasks,
            }
            for row in found.annotators
        ],
    }
