"""Votes → preference pairs (SPEC §1.6): plurality winner and loser per task, drops counted by reason.

The counting happens in the database (GROUP BY and window functions, the same SQL on SQLite and
PostgreSQL); Python only sees one row per task, never one per vote.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Integer, Select, and_, case, cast, func, literal_column, null, select, union_all
from sqlalchemy.orm import Session, aliased

from dspo import dawid_skene
from dspo.models import Candidate, Instance, Project, Review, Source, Task, Vote

# Why a task gave no record; every task with votes ends up as a record or under one of these.
DROP_REASONS = (
    "too_few_votes",  # fewer answers than required (k)
    "tie",  # "no visible difference" was as frequent as a pick, or more
    "all_bad",  # "all bad" was as frequent as a pick, or more
    "no_plurality",  # two candidates share the most best (or worst) choices
    "winner_is_loser",  # the plurality best is also the plurality worst
    "low_agreement",  # the winner's or the loser's share of the votes is under min_agreement
    "review_no_pair",  # a reviewer decided that the task gives no record, whatever the votes say
)
# The reasons that make a task with enough answers disputed: a reviewer's queue (dspo.services.reviews).
CONTESTED = ("tie", "all_bad", "no_plurality", "winner_is_loser", "low_agreement")
# How winner and loser are chosen: the most frequent choice, or Dawid-Skene (dspo.dawid_skene), where
# no_plurality is a tie of posteriors and low_agreement a posterior under min_agreement.
METHODS = ("plurality", "dawid_skene")


@dataclass(frozen=True)
class AggregationSettings:
    min_votes: int | None = None  # None: each task's own k (required_votes)
    min_agreement: float = 0.5  # minimum share of the votes (dawid_skene: posterior) of winner and loser
    image_level: bool = True  # also make records from image-level tasks
    method: str = "plurality"  # one of METHODS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown aggregation method {self.method!r}; known: {', '.join(METHODS)}")


@dataclass(frozen=True)
class Pair:
    """One aggregated preference: what the dataset writer needs to make a record."""

    task_id: int
    source_id: int
    instance_id: int | None
    lq: str
    winner: str
    loser: str
    winner_candidate_id: int
    loser_candidate_id: int
    size: tuple[int, int]  # SR width, height
    box: tuple[int, int, int, int]
    mask: str | None  # None: the whole image (image-level record)
    weight: float
    prompt: str
    content_text: str
    defect_text: str
    votes: int
    best_share: float
    worst_share: float


@dataclass
class Aggregate:
    pairs: list[Pair]
    drops: Counter[str] = field(default_factory=Counter)
    tasks: int = 0  # tasks that had at least one answer
    dropped: dict[int, str] = field(default_factory=dict)  # task id → why it gave no record
    reviewed: int = 0  # pairs whose winner and loser a reviewer chose
    fit: dict[str, Any] = field(default_factory=dict)  # Dawid-Skene's iterations and convergence


def _per_task(project_id: int, max_vote_id: int) -> Any:
    """One row per answered task: answer counts by outcome, and the plurality best and worst with
    their counts and the runner-up's count (0 if none).

    Counts per (task, kind, candidate) come from one UNION ALL of GROUP BYs, are ranked with a window
    function, and are folded back to one row per task by a GROUP BY: the result is a single derived
    table, so no two derived tables are ever joined (SQLite would scan one for every row of the other).
    """
    in_snapshot = (Task.project_id == project_id, Vote.id <= max_vote_id)

    def counts(kind: Any, candidate: Any, group: Any, *where: Any) -> Select[Any]:
        return (
            select(Vote.task_id, kind.label("kind"), candidate.label("candidate_id"), func.count().label("n"))
            .join(Task, Task.id == Vote.task_id)
            .where(*in_snapshot, *where)
            .group_by(Vote.task_id, group)
        )

    picked = Vote.outcome == "pick"
    best, worst = Vote.best_candidate_id, Vote.worst_candidate_id
    union = union_all(
        counts(literal_column("'best'"), best, best, picked),
        counts(literal_column("'worst'"), worst, worst, picked),
        counts(Vote.outcome, cast(null(), Integer), Vote.outcome, Vote.outcome != "skip"),
    ).subquery()
    ranked = select(
        union,
        func.row_number()
        .over(partition_by=(union.c.task_id, union.c.kind), order_by=(union.c.n.desc(), union.c.candidate_id))
        .label("rank"),
    ).subquery()

    def pick(kind: str, rank: int, column: Any) -> Any:
        return func.max(case((and_(ranked.c.kind == kind, ranked.c.rank == rank), column)))

    def total(*kinds: str) -> Any:
        # PostgreSQL sums integers to NUMERIC: cast back, so Python sees ints on every backend.
        return cast(
            func.coalesce(func.sum(case((ranked.c.kind.in_(kinds), ranked.c.n), else_=0)), 0), Integer
        )

    return (
        select(
            ranked.c.task_id,
            total("pick", "tie", "all_bad").label("n"),
            total("pick").label("picks"),
            total("tie").label("ties"),
            total("all_bad").label("bad"),
            pick("best", 1, ranked.c.candidate_id).label("best_id"),
            pick("best", 1, ranked.c.n).label("best_n"),
            func.coalesce(pick("best", 2, ranked.c.n), 0).label("best_second"),
            pick("worst", 1, ranked.c.candidate_id).label("worst_id"),
            pick("worst", 1, ranked.c.n).label("worst_n"),
            func.coalesce(pick("worst", 2, ranked.c.n), 0).label("worst_second"),
        )
        .group_by(ranked.c.task_id)
        .subquery()
    )


def _texts(
    session: Session, project_id: int, max_vote_id: int, column: Any, *, by_worst: bool
) -> dict[tuple[int, int | None], list[tuple[str, int]]]:
    """(task, worst candidate or None) → [(text, count)], counted case- and space-insensitively."""
    key = func.lower(func.trim(column))
    groups = [Vote.task_id, *([Vote.worst_candidate_id] if by_worst else []), key]
    rows = session.execute(
        select(*groups, func.min(func.trim(column)), func.count())
        .join(Task, Task.id == Vote.task_id)
        .where(Task.project_id == project_id, Vote.id <= max_vote_id, Vote.outcome != "skip", key != "")
        .group_by(*groups)
    )
    found: dict[tuple[int, int | None], list[tuple[str, int]]] = defaultdict(list)
    for row in rows:
        found[(row[0], row[1] if by_worst else None)].append((row[-2], row[-1]))
    return found


def _join_texts(counts: list[tuple[str, int]]) -> str:
    """Deduplicated (by the GROUP BY above), most frequent first, then alphabetical."""
    return "; ".join(text for text, _ in sorted(counts, key=lambda tn: (-tn[1], tn[0].lower())))


def newest_vote_id(session: Session, project_id: int) -> int:
    """The id of the project's newest vote (0 when it has none): a dataset's snapshot boundary."""
    stmt = select(func.max(Vote.id)).join(Task, Task.id == Vote.task_id).where(Task.project_id == project_id)
    return session.scalar(stmt) or 0


def _reviews(session: Session, project_id: int, max_vote_id: int, max_review_id: int) -> dict[int, Any]:
    """task → its newest review up to max_review_id: the decision, the reviewer's winner and loser
    (their images and size) and how many of the snapshot's votes chose them as best and worst."""
    if not max_review_id:
        return {}
    newest = (
        select(func.max(Review.id))
        .join(Task, Task.id == Review.task_id)
        .where(Task.project_id == project_id, Review.id <= max_review_id)
        .group_by(Review.task_id)
    )

    def chose(column: Any, candidate: Any) -> Any:
        where = (Vote.task_id == Review.task_id, Vote.id <= max_vote_id, Vote.outcome == "pick")
        return select(func.count()).where(*where, column == candidate).scalar_subquery()

    win, lose = aliased(Candidate), aliased(Candidate)
    rows = session.execute(
        select(
            Review.task_id,
            Review.decision,
            Review.best_candidate_id.label("best_id"),
            Review.worst_candidate_id.label("worst_id"),
            win.sha256.label("win_sha"),
            win.width,
            win.height,
            lose.sha256.label("lose_sha"),
            chose(Vote.best_candidate_id, Review.best_candidate_id).label("best_n"),
            chose(Vote.worst_candidate_id, Review.worst_candidate_id).label("worst_n"),
        )
        .outerjoin(win, win.id == Review.best_candidate_id)
        .outerjoin(lose, lose.id == Review.worst_candidate_id)
        .where(Review.id.in_(newest))
    )
    return {row.task_id: row for row in rows}


def newest_review_id(session: Session, project_id: int) -> int:
    """The id of the project's newest review (0 when it has none): the other snapshot boundary."""
    stmt = (
        select(func.max(Review.id)).join(Task, Task.id == Review.task_id).where(Task.project_id == project_id)
    )
    return session.scalar(stmt) or 0


def _decided_rows(
    session: Session, project_id: int, max_vote_id: int, settings: AggregationSettings
) -> tuple[list[Any], dict[str, Any]]:
    """One row per answered task that may become a record, with its winner and loser by the
    settings' method; and Dawid-Skene's fit report (empty under plurality)."""
    project = session.get(Project, project_id)
    if project is None:
        raise LookupError(f"project {project_id} does not exist")
    per_task = _per_task(project_id, max_vote_id)
    win, lose = aliased(Candidate), aliased(Candidate)
    rows = session.execute(
        select(
            per_task,
            Task.source_id,
            Task.instance_id,
            Task.required_votes,
            Source.lq_sha256,
            Source.prompt,
            win.sha256.label("win_sha"),
            win.width,
            win.height,
            lose.sha256.label("lose_sha"),
            Instance.mask_sha256,
            Instance.x0,
            Instance.y0,
            Instance.x1,
            Instance.y1,
            Instance.weight,
        )
        .join(Task, Task.id == per_task.c.task_id)
        .join(Source, Source.id == Task.source_id)
        .outerjoin(win, win.id == per_task.c.best_id)
        .outerjoin(lose, lose.id == per_task.c.worst_id)
        .outerjoin(Instance, Instance.id == Task.instance_id)
        # Held-out sources are for evaluation: never in a dataset, whatever the settings, even if
        # votes on them exist (tasks made before the source was held out).
        # Nor an evaluation's answers, nor a gold task's (its answers test annotators, and a sanity
        # task shows a candidate degraded on purpose).
        .where(Source.held_out.is_(False), Task.evaluation_id.is_(None), Task.state != "gold")
        .order_by(per_task.c.task_id)
    ).all()
    if settings.method == "dawid_skene":
        return dawid_skene.reweigh(session, project_id, max_vote_id, rows)
    return list(rows), {}


def drop_reasons(
    session: Session, project_id: int, max_vote_id: int, settings: AggregationSettings
) -> dict[int, str]:
    """task → why its votes alone give no record (reviews left out): what aggregate() would drop, without
    building pairs or counting texts."""
    rows, _ = _decided_rows(session, project_id, max_vote_id, settings)
    reasons = {row.task_id: _drop_reason(row, settings) for row in rows}
    return {task_id: reason for task_id, reason in reasons.items() if reason is not None}


def aggregate(
    session: Session,
    project_id: int,
    max_vote_id: int,
    settings: AggregationSettings,
    max_review_id: int = 0,
) -> Aggregate:
    """The pairs and drops of the votes up to max_vote_id. A task's newest review up to max_review_id
    (0: none) decides it instead of its votes: the reviewer's winner and loser, or no record."""
    rows, fit = _decided_rows(session, project_id, max_vote_id, settings)
    result = Aggregate(pairs=[], tasks=len(rows), fit=fit)
    reviews = _reviews(session, project_id, max_vote_id, max_review_id)
    kept = []
    for row in rows:
        if row.instance_id is None and not settings.image_level:
            continue
        review = reviews.get(row.task_id)
        if review is not None and review.decision == "pair":
            kept.append(SimpleNamespace(**{**_columns(row), **_chosen(review)}))
            result.reviewed += 1
            continue
        reason = "review_no_pair" if review is not None else _drop_reason(row, settings)
        if reason is not None:
            result.drops[reason] += 1
            result.dropped[row.task_id] = reason
        else:
            kept.append(row)

    content = _texts(session, project_id, max_vote_id, Vote.content_text, by_worst=False)
    defect = _texts(session, project_id, max_vote_id, Vote.defect_text, by_worst=True)
    # w_m is renormalised over the instances of a source that became records (SPEC §2).
    source_weight: Counter[int] = Counter()
    for row in kept:
        if row.instance_id is not None:
            source_weight[row.source_id] += row.weight
    for row in kept:
        image_level = row.instance_id is None
        result.pairs.append(
            Pair(
                task_id=row.task_id,
                source_id=row.source_id,
                instance_id=row.instance_id,
                lq=row.lq_sha256,
                winner=row.win_sha,
                loser=row.lose_sha,
                winner_candidate_id=row.best_id,
                loser_candidate_id=row.worst_id,
                size=(row.width, row.height),
                box=(0, 0, row.width, row.height) if image_level else (row.x0, row.y0, row.x1, row.y1),
                mask=None if image_level else row.mask_sha256,
                weight=1.0 if image_level else row.weight / source_weight[row.source_id],
                prompt=row.prompt,
                content_text=_join_texts(content.get((row.task_id, None), [])),
                # Only the texts of voters who chose the loser as worst describe the loser's defect.
                defect_text=_join_texts(defect.get((row.task_id, row.worst_id), [])),
                votes=row.n,
                best_share=row.best_n / row.n,
                worst_share=row.worst_n / row.n,
            )
        )
    return result


def _columns(row: Any) -> dict[str, Any]:
    """A task's row as a dict: a database row, or one that Dawid-Skene rewrote (a namespace)."""
    return vars(row) if isinstance(row, SimpleNamespace) else row._asdict()


def _chosen(review: Any) -> dict[str, Any]:
    """The columns of a task's row that a reviewer's decision replaces."""
    names = ("best_id", "worst_id", "win_sha", "width", "height", "lose_sha", "best_n", "worst_n")
    return {name: getattr(review, name) for name in names}


def _drop_reason(row: Any, settings: AggregationSettings) -> str | None:
    if row.n < (settings.min_votes or row.required_votes):
        return "too_few_votes"
    if row.picks <= row.ties or row.picks <= row.bad:
        return "tie" if row.ties >= row.bad else "all_bad"
    if settings.method == "dawid_skene":
        return _dawid_skene_drop_reason(row, settings)
    if row.best_n == row.best_second or row.worst_n == row.worst_second:
        return "no_plurality"
    if row.best_id == row.worst_id:
        return "winner_is_loser"
    if min(row.best_n, row.worst_n) / row.n < settings.min_agreement:
        return "low_agreement"
    return None


def _dawid_skene_drop_reason(row: Any, settings: AggregationSettings) -> str | None:
    if row.best_tied or row.worst_tied:
        return "no_plurality"
    if row.best_id == row.worst_id:
        return "winner_is_loser"
    if min(row.best_p, row.worst_p) < settings.min_agreement:
        return "low_agreement"
    return None


def krippendorff_alpha(counts: dict[int, Counter[int]]) -> float | None:
    """Nominal Krippendorff's alpha from per-unit value counts; units with one value are not pairable.
    None when there is nothing to compare or no expected disagreement."""
    units = [list(c.values()) for c in counts.values() if sum(c.values()) >= 2]
    totals: Counter[int] = Counter()
    for c in counts.values():
        if sum(c.values()) >= 2:
            totals.update(c)
    n = sum(totals.values())
    expected = n * n - sum(v * v for v in totals.values())
    if n < 2 or expected == 0:
        return None
    observed = sum((sum(u) ** 2 - sum(v * v for v in u)) / (sum(u) - 1) for u in units)
    return 1.0 - (n - 1) * observed / expected
