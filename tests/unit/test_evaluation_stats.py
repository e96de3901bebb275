"""The evaluation statistics against direct computations on known answers: SciPy's exact binomial test
and Wilson interval as the reference, and hand counts for the breakdowns, position bias and agreement."""

from math import sqrt

import pytest
from scipy.stats import binomtest

from dspo.evaluation_stats import (
    EvalAnswer,
    agreement,
    position_bias,
    sign_test,
    summarise,
    wilson_interval,
    win_rate,
)


def scipy_wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n, 0.5).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


@pytest.mark.parametrize(
    ("k", "n"), [(0, 1), (1, 1), (3, 10), (5, 10), (10, 14), (62, 100), (0, 40), (40, 40)]
)
def test_wilson_interval_matches_scipy(k: int, n: int) -> None:
    assert wilson_interval(k, n) == pytest.approx(scipy_wilson(k, n), abs=1e-12)


def test_wilson_interval_by_hand_and_without_data() -> None:
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96 sqrt(0.016 + 0.009604) / 1.38416
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert wilson_interval(8, 10) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("wins", "losses"), [(0, 0), (1, 0), (5, 5), (9, 1), (1, 9), (10, 4), (30, 12), (0, 25)]
)
def test_sign_test_matches_scipys_exact_binomial_test(wins: int, losses: int) -> None:
    expected = 1.0 if wins + losses == 0 else binomtest(wins, wins + losses, 0.5).pvalue
    assert sign_test(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_sign_test_by_hand() -> None:
    # 9 of 10: P(X <= 1) = 11 / 1024, doubled.
    assert sign_test(9, 1) == pytest.approx(22 / 1024, rel=1e-15)
    assert sign_test(5, 5) == 1.0


def test_win_rate_with_ties_apart_and_as_halves() -> None:
    rate = win_rate(["b"] * 10 + ["a"] * 4 + ["tie"] * 2)
    assert (rate.answers, rate.wins_b, rate.wins_a, rate.ties) == (16, 10, 4, 2)
    assert rate.win_rate == pytest.approx(10 / 14)
    assert rate.win_rate_interval == pytest.approx(scipy_wilson(10, 14), abs=1e-12)
    assert rate.win_rate_ties_as_halves == pytest.approx(11 / 16)
    assert rate.ties_as_halves_interval == pytest.approx(wilson_interval(11, 16), abs=1e-12)
    assert rate.ties_as_halves_interval == pytest.approx(scipy_wilson(11, 16), abs=1e-12)
    assert rate.tie_share == pytest.approx(2 / 16)
    assert rate.sign_test_p == pytest.approx(binomtest(10, 14, 0.5).pvalue, rel=1e-12)
    empty = win_rate([])
    assert empty.win_rate is None and empty.win_rate_ties_as_halves is None and empty.sign_test_p == 1.0


def answers() -> list[EvalAnswer]:
    """Three annotators on four sources. B on the right for u1, on the left for u2 and u3."""
    table = {
        "u1": ("right", ["right", "right", "left", "tie"]),  # b b a tie
        "u2": ("left", ["left", "left", "left", "left"]),  # b b b b
        "u3": ("left", ["left", "right", "tie", "left"]),  # b a tie b
    }
    return [
        EvalAnswer(annotator=user, item=source, b_side=side, answer=answer)  # type: ignore[arg-type]
        for user, (side, given) in table.items()
        for source, answer in zip((11, 12, 13, 14), given, strict=True)
    ]


def test_summary_breakdowns_position_and_agreement_by_hand() -> None:
    summary = summarise(answers(), skips=2)
    overall = summary.overall
    assert (overall.wins_b, overall.wins_a, overall.ties, overall.answers) == (8, 2, 2, 12)
    assert overall.win_rate == pytest.approx(0.8) and overall.win_rate_ties_as_halves == pytest.approx(9 / 12)
    assert overall.sign_test_p == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert {k: (v.wins_b, v.wins_a, v.ties) for k, v in summary.per_annotator.items()} == {
        "u1": (2, 1, 1),
        "u2": (4, 0, 0),
        "u3": (2, 1, 1),
    }
    assert {k: (v.wins_b, v.wins_a, v.ties) for k, v in summary.per_item.items()} == {
        11: (3, 0, 0),
        12: (2, 1, 0),
        13: (1, 1, 1),
        14: (2, 0, 1),
    }
    # "left" answers: u1 1, u2 4, u3 2 of 10 sided answers.
    position = summary.position
    assert (position.left, position.sided) == (7, 10) and position.left_share == pytest.approx(0.7)
    assert position.interval == pytest.approx(scipy_wilson(7, 10), abs=1e-12)
    assert position.sign_test_p == pytest.approx(binomtest(7, 10, 0.5).pvalue)
    # Agreeing pairs per item: 11 all b (3 of 3); 12 b b a (1); 13 a b tie (0); 14 b b tie (1).
    assert summary.agreement.items == 4 and summary.agreement.pairs == 12
    assert summary.agreement.pairwise == pytest.approx(5 / 12)
    assert summary.skips == 2
    as_json = summary.to_dict()
    assert set(as_json["per_annotator"]) == {"u1", "u2", "u3"} and set(as_json["per_item"]) == {
        "11",
        "12",
        "13",
        "14",
    }


def test_krippendorff_alpha_by_hand() -> None:
    """Nominal alpha = 1 - D_o / D_e with the coincidence matrix of the example above.

    Values per item (b=0, a=1, tie=2): {0,0,0}, {0,0,1}, {1,0,2}, {0,0,2}; n = 12 pairable values.
    Observed disagreement: sum over items of (disagreeing ordered pairs) / (m - 1), over n.
    Expected: from the totals n_b = 8, n_a = 2, n_tie = 2."""
    per_item = [[3, 0, 0], [2, 1, 0], [1, 1, 1], [2, 0, 1]]
    n = 12
    observed = sum((sum(c) ** 2 - sum(v * v for v in c)) / (sum(c) - 1) for c in per_item) / n
    totals = [8, 2, 2]
    expected = (n * n - sum(v * v for v in totals)) / (n * (n - 1))
    assert agreement(answers()).alpha == pytest.approx(1 - observed / expected)
    # Full agreement is alpha 1; one answer per item leaves nothing to pair.
    same = [EvalAnswer(u, s, "left", "left") for u in ("x", "y") for s in (1, 2, 3)]
    mixed = same + [EvalAnswer(u, 4, "left", "right") for u in ("x", "y")]
    assert agreement(mixed).alpha == pytest.approx(1.0) and agreement(mixed).pairwise == 1.0
    lonely = agreement([EvalAnswer("x", 1, "left", "left")])
    assert (lonely.items, lonely.pairs, lonely.pairwise, lonely.alpha) == (0, 0, None, None)


def test_position_bias_without_sided_answers() -> None:
    bias = position_bias([EvalAnswer("x", 1, "left", "tie")])
    assert (bias.sided, bias.left_share, bias.interval, bias.sign_test_p) == (0, None, (0.0, 1.0), 1.0)
