"""Annotator quality, computed from answers alone (no database): agreement with the others, Krippendorff's
alpha over windows of tasks, position bias with a chi-square test, and answers faster than a floor.

Agreement with the consensus is leave-one-out: an answer is compared with the plurality of the *other*
answers to the same task. Including the answer itself in the consensus (as the first version did) makes
every task an annotator answered alone count as a full agreement, so it rewarded working alone."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from dspo.aggregate import krippendorff_alpha


@dataclass(frozen=True)
class Answer:
    """One non-skip answer. Positions are the candidates' own (Candidate.position), the same categories
    in every task; `shown_order` is the order of candidate ids the annotator saw."""

    vote_id: int
    task_id: int
    user_id: int
    outcome: str  # pick | tie | all_bad
    best_id: int | None = None
    worst_id: int | None = None
    best_position: int | None = None
    worst_position: int | None = None
    shown_order: tuple[int, ...] = ()
    lead_time_ms: int | None = None


@dataclass
class Agreement:
    """Agreement with the others' plurality on tasks shared with at least one other annotator."""

    shared_tasks: int = 0  # tasks this annotator answered that someone else answered too
    best_tasks: int = 0  # of those, tasks where both picked and the others' best had a unique plurality
    best_agreed: int = 0
    worst_tasks: int = 0
    worst_agreed: int = 0

    @property
    def best(self) -> float | None:
        return self.best_agreed / self.best_tasks if self.best_tasks else None

    @property
    def worst(self) -> float | None:
        return self.worst_agreed / self.worst_tasks if self.worst_tasks else None


def _plurality(choices: Iterable[int | None]) -> int | None:
    """The most frequent choice if it is unique, else None."""
    ranked = Counter(c for c in choices if c is not None).most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def agreement_with_others(answers: Iterable[Answer]) -> dict[int, Agreement]:
    """Per annotator, leave-one-out agreement; `answers` must come grouped by task (ordered by task id)."""
    result: dict[int, Agreement] = defaultdict(Agreement)
    for _, group in groupby(answers, key=lambda a: a.task_id):
        task = list(group)
        if len(task) < 2:
            continue  # answered alone: nothing to agree with
        for answer in task:
            counts = result[answer.user_id]
            counts.shared_tasks += 1
            others = [a for a in task if a is not answer and a.outcome == "pick"]
            if answer.outcome != "pick" or not others:
                continue
            best = _plurality(a.best_id for a in others)
            if best is not None:
                counts.best_tasks += 1
                counts.best_agreed += answer.best_id == best
            worst = _plurality(a.worst_id for a in others)
            if worst is not None:
                counts.worst_tasks += 1
                counts.worst_agreed += answer.worst_id == worst
    return dict(result)


@dataclass(frozen=True)
class AlphaWindow:
    first_task_id: int  # in the order the tasks were completed
    last_task_id: int
    tasks: int  # tasks with at least two picks (the units alpha pairs)
    best: float | None
    worst: float | None


def _alpha(tasks: Sequence[list[Answer]], position: str) -> float | None:
    counts: dict[int, Counter[int]] = {}
    for task in tasks:
        values = [getattr(a, position) for a in task if a.outcome == "pick"]
        counts[task[0].task_id] = Counter(v for v in values if v is not None)
    return krippendorff_alpha(counts)


def alpha(answers: Iterable[Answer]) -> tuple[float | None, float | None]:
    """Nominal alpha over the best and over the worst positions; `answers` grouped by task."""
    tasks = [list(g) for _, g in groupby(answers, key=lambda a: a.task_id)]
    return _alpha(tasks, "best_position"), _alpha(tasks, "worst_position")


def alpha_windows(answers: Iterable[Answer], size: int) -> list[AlphaWindow]:
    """Alpha over consecutive windows of `size` pairable tasks (two picks or more), the tasks in the
    order of their newest answer. A task is alpha's unit, so it is never split between windows (a window
    of votes or of days would cut a task's answers apart); every window but the last has the same number
    of units, so the points of the curve are equally certain, however unevenly the work was spread over
    the days. The last window holds what is left and says how many tasks it has."""
    tasks = [list(g) for _, g in groupby(answers, key=lambda a: a.task_id)]
    pairable = [t for t in tasks if sum(a.outcome == "pick" for a in t) >= 2]
    pairable.sort(key=lambda t: max(a.vote_id for a in t))
    windows = []
    for start in range(0, len(pairable), size):
        chunk = pairable[start : start + size]
        windows.append(
            AlphaWindow(
                first_task_id=chunk[0][0].task_id,
                last_task_id=chunk[-1][0].task_id,
                tasks=len(chunk),
                best=_alpha(chunk, "best_position"),
                worst=_alpha(chunk, "worst_position"),
            )
        )
    return windows


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square with `dof` degrees of freedom: the regularized upper incomplete gamma
    Q(dof/2, x/2), by the recurrence Q(a+1, h) = Q(a, h) + h^a e^-h / Γ(a+1) from Q(1, h) = e^-h (even
    dof) or Q(1/2, h) = erfc(√h) (odd dof); exact for the small integer dof a position test has."""
    if dof < 1:
        raise ValueError(f"dof must be at least 1, got {dof}")
    if x <= 0:
        return 1.0
    h = x / 2
    a = 1.0 if dof % 2 == 0 else 0.5
    q = math.exp(-h) if dof % 2 == 0 else math.erfc(math.sqrt(h))
    term = math.exp(a * math.log(h) - h - math.lgamma(a + 1))
    while a < dof / 2:
        q += term
        a += 1
        term *= h / a
    return min(1.0, q)


@dataclass(frozen=True)
class PositionTest:
    """How often a choice fell on each shown position, and the chi-square goodness-of-fit test of those
    counts against a uniform choice. The test's approximation wants at least 5 expected per position."""

    counts: tuple[int, ...]
    chi2: float | None
    p_value: float | None

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def expected(self) -> float:
        return self.total / len(self.counts)


def position_test(counts: Sequence[int]) -> PositionTest:
    total = sum(counts)
    if total == 0 or len(counts) < 2:
        return PositionTest(tuple(counts), None, None)
    expected = total / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    return PositionTest(tuple(counts), chi2, chi2_sf(chi2, len(counts) - 1))


@dataclass
class Positions:
    """Shown positions (0 = first shown) of the best and of the worst choices."""

    n: int
    best: list[int] = field(init=False)
    worst: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.best, self.worst = [0] * self.n, [0] * self.n

    def add(self, answer: Answer) -> None:
        """Count a pick shown with `n` candidates; other answers have no position."""
        order = answer.shown_order
        if answer.outcome != "pick" or len(order) != self.n:
            return
        if answer.best_id in order:
            self.best[order.index(answer.best_id)] += 1
        if answer.worst_id in order:
            self.worst[order.index(answer.worst_id)] += 1


def histogram(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin [edges[i], edges[i+1]), the last bin open-ended: len(edges) bins."""
    counts = [0] * len(edges)
    for v in values:
        i = next((i for i in range(len(edges) - 1, -1, -1) if v >= edges[i]), 0)
        counts[i] += 1
    return counts
