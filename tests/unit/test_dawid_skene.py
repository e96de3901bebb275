"""The one-coin Dawid-Skene EM (dspo.dawid_skene.fit) on votes with a known answer."""

import numpy as np
import pytest

from dspo.aggregate import AggregationSettings
from dspo.datasets import BuildSettings
from dspo.dawid_skene import PRIOR_CORRECT, PRIOR_WRONG, fit

N = 4


def outvoted(contested: int = 5, checkable: int = 20) -> tuple[np.ndarray, ...]:
    """Annotators 0 and 1 always choose the truth (candidate t*N + t % N of task t); annotators 2..4 choose
    three different wrong candidates on the checkable tasks, and all the same wrong one on the contested
    tasks, where they outvote the careful pair 3 to 2."""
    task, annotator, choice = [], [], []
    for t in range(checkable + contested):
        truth = t % N
        for a in range(5):
            offset = 0 if a < 2 else (a - 1 if t < checkable else 1)
            task.append(t)
            annotator.append(a)
            choice.append(t * N + (truth + offset) % N)
    return np.array(task), np.array(annotator), np.array(choice), np.full(len(task), N)


def plurality(task: np.ndarray, choice: np.ndarray) -> dict[int, int]:
    winners = {}
    for t in np.unique(task):
        values, counts = np.unique(choice[task == t], return_counts=True)
        winners[int(t)] = int(values[np.argmax(counts)])
    return winners


def test_careful_pair_outvoted_by_a_bloc_is_recovered() -> None:
    task, annotator, choice, n = outvoted()
    truth = {t: t * N + t % N for t in range(25)}
    by_votes = plurality(task, choice)
    assert [t for t in truth if by_votes[t] != truth[t]] == [20, 21, 22, 23, 24]  # plurality is wrong there

    result = fit(task, annotator, choice, n)
    assert dict(zip(result.tasks.tolist(), result.choice.tolist(), strict=True)) == truth
    assert result.converged and result.iterations < 50
    assert not result.tied.any()
    assert (result.posterior[20:] > 0.99).all()  # the bloc's three votes weigh (nearly) nothing
    assert result.votes_for_choice[20:].tolist() == [2] * 5
    careful, bloc = result.accuracy[:2], result.accuracy[2:]
    assert careful.min() > 0.9 and bloc.max() < 0.1


def test_the_same_votes_in_any_order_give_the_same_bits() -> None:
    task, annotator, choice, n = outvoted()
    first = fit(task, annotator, choice, n)
    order = np.random.default_rng(1).permutation(len(task))
    again = fit(task[order], annotator[order], choice[order], n[order])
    for name in ("tasks", "choice", "posterior", "runner_up", "accuracy"):
        assert getattr(first, name).tobytes() == getattr(again, name).tobytes(), name
    assert first.iterations == again.iterations


def test_chance_level_annotators_weigh_nothing_and_leave_a_tie() -> None:
    # One pair, two annotators who disagree: nothing says who is right, so neither candidate wins.
    result = fit(np.array([7, 7]), np.array([1, 2]), np.array([70, 71]), np.array([2, 2]))
    assert result.tied.tolist() == [True] and result.posterior[0] == pytest.approx(0.5)
    assert result.accuracy == pytest.approx([0.5, 0.5])


def test_a_candidate_nobody_chose_keeps_its_share() -> None:
    # Three of four candidates unvoted: the only choice wins, but not with certainty.
    task, annotator, choice, n = outvoted()
    extra = fit(np.r_[task, 99, 99], np.r_[annotator, 0, 1], np.r_[choice, 990, 990], np.r_[n, N, N])
    i = extra.tasks.tolist().index(99)
    assert extra.choice[i] == 990 and 0.5 < extra.posterior[i] < 1
    assert extra.runner_up[i] == pytest.approx((1 - extra.posterior[i]) / 3)


def test_votes_nobody_else_shares_do_not_count_towards_accuracy() -> None:
    # Annotator 9 answered only tasks nobody else answered: their accuracy stays the prior's mean.
    task, annotator, choice, n = outvoted()
    alone = np.arange(100, 110)
    result = fit(np.r_[task, alone], np.r_[annotator, [9] * 10], np.r_[choice, alone * N], np.r_[n, [N] * 10])
    assert result.accuracy[result.annotators.tolist().index(9)] == pytest.approx(
        PRIOR_CORRECT / (PRIOR_CORRECT + PRIOR_WRONG)
    )


def test_max_iter_bounds_the_fit() -> None:
    task, annotator, choice, n = outvoted()
    result = fit(task, annotator, choice, n, max_iter=1)
    assert result.iterations == 1 and not result.converged
    assert result.report() == {"iterations": 1, "converged": False, "annotators": 5, "tasks": 25}


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no votes"):
        fit(np.array([]), np.array([]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="two candidates"):
        fit(np.array([1]), np.array([1]), np.array([1]), np.array([1]))
    with pytest.raises(ValueError, match="max_iter"):
        fit(np.array([1]), np.array([1]), np.array([1]), np.array([2]), max_iter=0)


def test_an_unknown_method_is_refused() -> None:
    for make in (lambda: AggregationSettings(method="mean"), lambda: BuildSettings(method="mean")):
        with pytest.raises(ValueError, match="unknown aggregation method 'mean'"):
            make()
    assert BuildSettings().aggregation.method == "plurality"  # a dataset stored before the setting
