"""dspo.quality_stats against hand-computed values; the chi-square tail against scipy's."""

import pytest
from scipy import stats

from dspo.quality_stats import (
    Answer,
    Positions,
    agreement_with_others,
    alpha,
    alpha_windows,
    chi2_sf,
    histogram,
    position_test,
)


def pick(vote_id: int, task: int, user: int, best: int, worst: int, shown: tuple[int, ...] = ()) -> Answer:
    # Candidate ids 10, 11, 12 in every task, at positions 0, 1, 2.
    return Answer(vote_id, task, user, "pick", best, worst, best - 10, worst - 10, shown)


def test_two_annotators_who_disagree_on_their_only_shared_task_agree_zero() -> None:
    """The regression of issue 13: each also answered tasks alone, which must not count."""
    answers = [
        pick(1, 1, user=1, best=10, worst=12),
        pick(2, 2, user=2, best=11, worst=10),
        pick(3, 3, user=1, best=10, worst=12),  # task 3: shared, they disagree on both
        pick(4, 3, user=2, best=11, worst=10),
    ]
    found = agreement_with_others(answers)
    for user in (1, 2):
        assert found[user].shared_tasks == 1
        assert (found[user].best, found[user].best_tasks) == (0.0, 1)
        assert (found[user].worst, found[user].worst_tasks) == (0.0, 1)


def test_leave_one_out_consensus_by_hand() -> None:
    answers = [
        # Task 1: users 1, 2 pick best 10; user 3 picks 11. Worst: 12, 12, 12.
        pick(1, 1, 1, 10, 12),
        pick(2, 1, 2, 10, 12),
        pick(3, 1, 3, 11, 12),
        # Task 2: users 1 and 2 split (no plurality for the third), user 3 says "tie".
        pick(4, 2, 1, 10, 11),
        pick(5, 2, 2, 11, 10),
        Answer(6, 2, 3, "tie"),
    ]
    found = agreement_with_others(answers)
    # User 1: task 1 others {10, 11} best → no plurality; worst {12, 12} → agrees. Task 2: the only
    # other pick is user 2's (11, 10): disagrees on both.
    assert (found[1].best_tasks, found[1].best_agreed) == (1, 0)
    assert (found[1].worst_tasks, found[1].worst_agreed) == (2, 1)
    # User 3: task 1 others best {10, 10} → 10, disagrees; worst 12, agrees. Task 2: a tie is no pick.
    assert (found[3].best, found[3].best_tasks) == (0.0, 1)
    assert (found[3].worst, found[3].worst_tasks) == (1.0, 1)
    assert found[3].shared_tasks == 2


def test_alpha_by_hand_and_windows_keep_tasks_whole() -> None:
    # Three tasks with two picks each. Best positions: (0, 0), (1, 1), (0, 1).
    answers = [
        pick(1, 1, 1, 10, 12),
        pick(2, 1, 2, 10, 12),
        pick(3, 2, 1, 11, 12),
        pick(4, 2, 2, 11, 12),
        pick(7, 3, 1, 10, 12),
        pick(8, 3, 2, 11, 12),
        pick(9, 4, 1, 10, 12),  # answered alone: not pairable
    ]
    best, worst = alpha(answers)
    # n = 6 values 0, 0, 1, 1, 0, 1: three 0s and three 1s. Observed: one disagreeing unit, 2 ordered
    # pairs / (2 - 1) = 2. Expected: 36 - 9 - 9 = 18. alpha = 1 - (6 - 1) * 2 / 18 = 4/9.
    assert best == pytest.approx(4 / 9)
    assert worst is None  # every worst is position 2: no expected disagreement
    windows = alpha_windows(answers, size=2)
    assert [(w.first_task_id, w.last_task_id, w.tasks) for w in windows] == [(1, 2, 2), (3, 3, 1)]
    assert windows[0].best == pytest.approx(1.0)
    assert windows[1].best == pytest.approx(0.0)  # one unit, a 0 and a 1: 1 - (2 - 1) * 2 / (4 - 1 - 1)


def test_windows_follow_the_newest_answer_of_each_task() -> None:
    answers = [pick(1, 1, 1, 10, 12), pick(9, 1, 2, 10, 12), pick(2, 2, 1, 10, 12), pick(3, 2, 2, 11, 12)]
    windows = alpha_windows(answers, size=1)
    assert [w.first_task_id for w in windows] == [2, 1]


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 3.84, 10.0, 40.0])
def test_chi2_sf_matches_scipy(x: float, dof: int) -> None:
    assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-15)


def test_chi2_sf_known_values() -> None:
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05)  # the textbook 5% critical value
    assert chi2_sf(5.991464547107979, 2) == pytest.approx(0.05)
    assert chi2_sf(2.0, 2) == pytest.approx(1 / 2.718281828459045)  # e^(-x/2) for dof 2
    assert chi2_sf(0.0, 3) == 1.0


def test_position_test_by_hand() -> None:
    # 30 choices over 3 positions: 20, 5, 5. Expected 10 each: chi2 = (100 + 25 + 25) / 10 = 15.
    found = position_test([20, 5, 5])
    assert found.chi2 == pytest.approx(15.0)
    assert found.p_value == pytest.approx(2.718281828459045**-7.5)  # dof 2: e^(-15/2)
    assert found.expected == 10 and found.total == 30
    assert position_test([0, 0, 0]).p_value is None
    assert position_test([4, 4, 4]).p_value == pytest.approx(1.0)


def test_positions_count_the_shown_order_not_the_candidates_own() -> None:
    positions = Positions(3)
    positions.add(pick(1, 1, 1, best=12, worst=10, shown=(12, 11, 10)))  # best shown first, worst last
    positions.add(pick(2, 2, 1, best=11, worst=12, shown=(10, 11, 12)))
    positions.add(Answer(3, 3, 1, "all_bad", shown_order=(10, 11, 12)))  # no choice, no position
    positions.add(pick(4, 4, 1, best=10, worst=11, shown=(10, 11)))  # an order of another size
    assert positions.best == [1, 1, 0]
    assert positions.worst == [0, 0, 2]


def test_histogram_bins_with_an_open_last_bin() -> None:
    assert histogram([0, 999, 1000, 1500, 2000, 70_000], [0, 1000, 2000]) == [2, 2, 2]
