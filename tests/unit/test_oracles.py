"""Oracles (the built-in `fidelity`, loading by name or module:callable, checking answers) and how a
simulated annotator turns scores into an answer."""

import math

import numpy as np
import pytest
from PIL import Image

from dspo.oracles import Judgement, OracleError, OracleQuery, judge, load_oracle
from dspo.oracles.fidelity import MAX_PSNR, fidelity, psnr
from dspo.simulate import Decision, Profile, decide, profiles


def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    hq = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    mask = np.zeros((32, 48), bool)
    mask[8:24, 8:24] = True
    return hq, mask


def noisy(hq: np.ndarray, where: np.ndarray, amount: int) -> np.ndarray:
    out = hq.astype(int)
    out[where] += amount
    return np.clip(out, 0, 255).astype(np.uint8)


def query(
    hq: np.ndarray | None, candidates: list[np.ndarray], mask: np.ndarray | None, lq: np.ndarray
) -> OracleQuery:
    return OracleQuery(
        lq=lq, candidates=candidates, hq=hq, mask=mask, box=(8, 8, 24, 24), scale=4, kind="instance"
    )


def test_fidelity_is_psnr_to_hq_inside_the_region() -> None:
    hq, mask = images()
    lq = np.asarray(Image.fromarray(hq).reduce(4))
    exact, inside, outside = hq.copy(), noisy(hq, mask, 40), noisy(hq, ~mask, 40)
    scores = fidelity(query(hq, [exact, inside, outside], mask, lq))
    assert scores[0] == MAX_PSNR and scores[2] == MAX_PSNR  # what is outside the region does not count
    diff = inside[mask].astype(float) - hq[mask].astype(float)
    assert scores[1] == pytest.approx(10 * math.log10(255**2 / np.mean(diff**2)))
    assert scores[1] == pytest.approx(psnr(inside, hq, mask))
    # The whole image when the task has no region.
    whole = fidelity(query(hq, [exact, inside, outside], None, lq))
    assert whole[0] == MAX_PSNR and whole[1] < MAX_PSNR and whole[2] < MAX_PSNR


def test_fidelity_without_hq_compares_with_the_lq_image() -> None:
    hq, mask = images()
    lq = np.asarray(Image.fromarray(hq).reduce(4))
    scores = fidelity(query(None, [hq, noisy(hq, mask, 60), noisy(hq, ~mask, 60)], mask, lq))
    assert scores[0] > scores[1] and scores[0] == scores[2]


def test_oracles_load_by_name_or_module_callable_and_are_checked() -> None:
    assert load_oracle("fidelity") is fidelity
    assert load_oracle("dspo.oracles.fidelity:fidelity") is fidelity
    with pytest.raises(OracleError, match="unknown oracle 'nope'"):
        load_oracle("nope")
    with pytest.raises(OracleError, match="cannot load"):
        load_oracle("dspo.oracles.fidelity:nothing_here")
    with pytest.raises(OracleError, match="not callable"):
        load_oracle("dspo.oracles.fidelity:MAX_PSNR")
    hq, mask = images()
    q = query(hq, [hq, hq], mask, hq)
    assert judge(lambda _: (1, 2), q) == Judgement([1.0, 2.0])
    assert judge(lambda _: Judgement([3, 1], "sky", "blotchy"), q) == Judgement([3.0, 1.0], "sky", "blotchy")
    for bad in ([1.0], [1.0, math.nan], [1.0, math.inf]):
        with pytest.raises(OracleError, match="one finite score per candidate"):
            judge(lambda _, bad=bad: bad, q)


def test_decide_follows_the_scores_the_tie_threshold_and_the_position_bias() -> None:
    rng = np.random.default_rng(0)
    exact = Profile(noise=0.0, tie_threshold=0.5)
    assert decide([1.0, 3.0, 2.0], exact, rng) == Decision("pick", best=1, worst=0)
    assert decide([1.0, 1.2, 1.1], exact, rng) == Decision("tie")
    # The first shown gets the bias: 1.0 + 2.5 beats 3.0.
    assert decide([1.0, 3.0, 2.0], Profile(noise=0.0, tie_threshold=0.5, position_bias=2.5), rng).best == 0
    # With noise, the better of two close candidates wins more often than not, but not always.
    noisy_profile = Profile(noise=1.0, tie_threshold=0.0)
    wins = sum(decide([0.0, 0.5], noisy_profile, rng).best == 1 for _ in range(2000))
    assert 1200 < wins < 1800


def test_profiles_differ_by_a_seeded_spread() -> None:
    base = Profile(noise=1.0, tie_threshold=0.2, position_bias=0.1, skip_rate=0.1, seconds_per_task=2.0)
    assert profiles(base, 3, spread=0.0, seed=1) == [base] * 3
    drawn = profiles(base, 5, spread=0.5, seed=1)
    assert drawn == profiles(base, 5, spread=0.5, seed=1) and len(set(drawn)) == 5
    assert all(0.5 <= p.noise <= 1.5 and 1.0 <= p.seconds_per_task <= 3.0 for p in drawn)
