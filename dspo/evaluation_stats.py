"""The statistics of a blind A/B evaluation (SPEC §1 step 8): pure functions over answers.

An answer says which side looked better ("left", "right", "tie"; skips are left out) and on which
side B was shown. From answers this module computes:

- the win rate of B over A two ways: ties left out (wins_b / (wins_b + wins_a)), and ties counted as
  halves ((wins_b + ties / 2) / answers), each with a Wilson 95% score interval, and the tie share;
- the two-sided exact sign test of "B and A are equally good" (ties left out, as the sign test does);
- the same per annotator and per source;
- position bias: the share of "left" among the answers that chose a side, with its interval and the
  sign test of "left and right are equally likely";
- agreement between annotators who judged the same item: the share of agreeing pairs, and nominal
  Krippendorff's alpha over the outcomes (B better, A better, tie).

Nothing here touches a database, so the evaluation service, the simulator and the loop benchmark
share one definition of every number."""

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass
from math import comb, sqrt
from typing import Any, Literal

from dspo.aggregate import krippendorff_alpha

Side = Literal["left", "right"]
Answer = Literal["left", "right", "tie"]
Outcome = Literal["b", "a", "tie"]

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


@dataclass(frozen=True)
class EvalAnswer:
    """One annotator's answer on one item (a held-out source, in an evaluation round)."""

    annotator: Hashable
    item: Hashable
    b_side: Side  # where B was shown to this annotator
    answer: Answer

    @property
    def outcome(self) -> Outcome:
        if self.answer == "tie":
            return "tie"
        return "b" if self.answer == self.b_side else "a"


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion; (0, 1) when there is nothing to go on. successes may
    be fractional (ties counted as halves)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(successes: int, failures: int) -> float:
    """Two-sided exact sign test of P(success) = 1/2: twice the smaller binomial tail, at most 1.
    Computed with integers, so it is exact up to the final division."""
    n = successes + failures
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(successes, failures) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class WinRate:
    answers: int  # skips are not answers
    wins_b: int
    wins_a: int
    ties: int
    win_rate: float | None  # wins_b / (wins_b + wins_a); None without a decided answer
    win_rate_interval: tuple[float, float]
    win_rate_ties_as_halves: float | None  # (wins_b + ties / 2) / answers
    ties_as_halves_interval: tuple[float, float]
    tie_share: float | None
    sign_test_p: float


def win_rate(outcomes: Iterable[Outcome]) -> WinRate:
    counts = Counter(outcomes)
    b, a, ties = counts["b"], counts["a"], counts["tie"]
    decided, n = b + a, b + a + ties
    return WinRate(
        answers=n,
        wins_b=b,
        wins_a=a,
        ties=ties,
        win_rate=b / decided if decided else None,
        win_rate_interval=wilson_interval(b, decided),
        win_rate_ties_as_halves=(b + ties / 2) / n if n else None,
        ties_as_halves_interval=wilson_interval(b + ties / 2, n),
        tie_share=ties / n if n else None,
        sign_test_p=sign_test(b, a),
    )


@dataclass(frozen=True)
class PositionBias:
    """How often annotators chose the left side, among answers that chose a side (0.5 = no bias)."""

    sided: int
    left: int
    left_share: float | None
    interval: tuple[float, float]
    sign_test_p: float


def position_bias(answers: Iterable[EvalAnswer]) -> PositionBias:
    counts = Counter(a.answer for a in answers)
    left, sided = counts["left"], counts["left"] + counts["right"]
    return PositionBias(
        sided=sided,
        left=left,
        left_share=left / sided if sided else None,
        interval=wilson_interval(left, sided),
        sign_test_p=sign_test(left, counts["right"]),
    )


@dataclass(frozen=True)
class Agreement:
    """Between annotators on the same item; items with a single answer are not pairable."""

    items: int  # items with at least two answers
    pairs: int  # pairs of answers on the same item
    pairwise: float | None  # share of those pairs with the same outcome
    alpha: float | None  # nominal Krippendorff's alpha over the outcomes b / a / tie


OUTCOME_CODES: dict[Outcome, int] = {"b": 0, "a": 1, "tie": 2}


def agreement(answers: Iterable[EvalAnswer]) -> Agreement:
    per_item: dict[Hashable, Counter[int]] = defaultdict(Counter)
    for answer in answers:
        per_item[answer.item][OUTCOME_CODES[answer.outcome]] += 1
    pairable = {item: c for item, c in per_item.items() if sum(c.values()) >= 2}
    pairs = sum(comb(sum(c.values()), 2) for c in pairable.values())
    agreeing = sum(comb(n, 2) for c in pairable.values() for n in c.values())
    return Agreement(
        items=len(pairable),
        pairs=pairs,
        pairwise=agreeing / pairs if pairs else None,
        alpha=krippendorff_alpha({i: c for i, c in enumerate(pairable.values())}),
    )


@dataclass(frozen=True)
class EvaluationSummary:
    overall: WinRate
    per_annotator: dict[Hashable, WinRate]
    per_item: dict[Hashable, WinRate]
    position: PositionBias
    agreement: Agreement
    skips: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: keys of the breakdowns become strings."""
        return {
            "overall": asdict(self.overall),
            "per_annotator": {str(k): asdict(v) for k, v in self.per_annotator.items()},
            "per_item": {str(k): asdict(v) for k, v in self.per_item.items()},
            "position": asdict(self.position),
            "agreement": asdict(self.agreement),
            "skips": self.skips,
        }


def summarise(answers: Iterable[EvalAnswer], skips: int = 0) -> EvaluationSummary:
    """Every statistic of this module over one round's answers (skips counted, never used)."""
    answers = list(answers)
    by_annotator: dict[Hashable, list[Outcome]] = defaultdict(list)
    by_item: dict[Hashable, list[Outcome]] = defaultdict(list)
    for answer in answers:
        by_annotator[answer.annotator].append(answer.outcome)
        by_item[answer.item].append(answer.outcome)
    return EvaluationSummary(
        overall=win_rate(a.outcome for a in answers),
        # Breakdowns in the order their keys first appear in the answers.
        per_annotator={k: win_rate(v) for k, v in by_annotator.items()},
        per_item={k: win_rate(v) for k, v in by_item.items()},
        position=position_bias(answers),
        agreement=agreement(answers),
        skips=skips,
    )
