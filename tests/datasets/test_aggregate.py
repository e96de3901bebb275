"""Aggregation: plurality winner and loser, every drop reason, texts, weights, the snapshot boundary,
and the agreement statistics; on SQLite and PostgreSQL (the counting is SQL)."""

from collections import Counter

import pytest
from sqlalchemy import select

from dspo.aggregate import AggregationSettings, aggregate, krippendorff_alpha, newest_vote_id
from dspo.models import Instance
from dspo.runtime import Runtime
from dspo.services.quality import agreement
from tests.datasets.helpers import make_project, tasks, users, vote


@pytest.fixture
def voted(runtime: Runtime) -> tuple[int, list, list[int]]:
    project_id = make_project(runtime, n_sources=3)
    found = tasks(runtime, project_id)
    assert [t.instance_id is None for t in found] == [False, False, False, True] * 3
    u = users(runtime, ["u1", "u2", "u3", "u4", "u5", "u6"])
    t = found
    # t0: kept, with texts
    vote(runtime, t[0], u[0], content="Red brick wall", defect="invented letters")
    vote(runtime, t[0], u[1], content=" red brick wall", defect="Invented letters")
    vote(runtime, t[0], u[2], content="sky", defect="blur", worst=2, best=0)
    # t1: two answers and a skip, k = 3
    vote(runtime, t[1], u[0])
    vote(runtime, t[1], u[1])
    vote(runtime, t[1], u[2], outcome="skip")
    # t2: "no visible difference" outweighs the pick
    vote(runtime, t[2], u[0], outcome="tie")
    vote(runtime, t[2], u[1], outcome="tie")
    vote(runtime, t[2], u[2])
    # t3 (image level): every candidate chosen once as best
    vote(runtime, t[3], u[0], best=0, worst=1)
    vote(runtime, t[3], u[1], best=1, worst=2)
    vote(runtime, t[3], u[2], best=2, worst=0)
    # t4: all bad
    vote(runtime, t[4], u[0], outcome="all_bad")
    vote(runtime, t[4], u[1], outcome="all_bad")
    vote(runtime, t[4], u[2])
    # t5: six answers; candidate 0 is both the plurality best (3 of 6) and the plurality worst (3 of 6)
    for user_id, (best, worst) in zip(u, [(0, 1), (0, 2), (0, 1), (1, 0), (2, 0), (1, 0)], strict=True):
        vote(runtime, t[5], user_id, best=best, worst=worst)
    # t6: 2 of 3 agree on the winner and on the loser
    vote(runtime, t[6], u[0], best=0, worst=1)
    vote(runtime, t[6], u[1], best=0, worst=2)
    vote(runtime, t[6], u[2], best=2, worst=1)
    # t7 (image level) and source 3's instances t8..t10: unanimous
    for task in (t[7], t[8], t[9], t[10]):
        for user_id in u[:3]:
            vote(runtime, task, user_id, best=2, worst=0)
    return project_id, found, u


def test_plurality_pairs_drops_and_agreement(runtime: Runtime, voted) -> None:
    project_id, t, u = voted
    with runtime.sessions() as session:
        result = aggregate(session, project_id, newest_vote_id(session, project_id), AggregationSettings())
        instance_weight = {i: w for i, w in session.execute(select(Instance.id, Instance.weight))}
    assert result.drops == Counter(too_few_votes=1, tie=1, no_plurality=1, all_bad=1, winner_is_loser=1), (
        result.drops
    )
    assert result.tasks == 11
    pairs = {p.task_id: p for p in result.pairs}
    assert sorted(pairs) == [t[i].id for i in (0, 6, 7, 8, 9, 10)]

    first = pairs[t[0].id]
    assert (first.winner_candidate_id, first.loser_candidate_id) == (t[0].candidates[0], t[0].candidates[1])
    assert (first.votes, first.best_share, first.worst_share) == (3, 1.0, pytest.approx(2 / 3))
    # Case- and space-insensitive duplicates merge, most frequent first; the defect texts are those of
    # the voters whose worst is the loser.
    assert first.content_text == "Red brick wall; sky"
    assert first.defect_text.lower() == "invented letters"
    assert first.mask is not None and first.box != (0, 0, *first.size)

    image = pairs[t[7].id]
    assert image.instance_id is None and image.mask is None and image.weight == 1.0
    assert image.box == (0, 0, *image.size) and image.size == (96, 64)

    # Source 3 kept all three instances: weights renormalised to sum 1, proportional to the areas' w_m.
    third = [pairs[t[i].id] for i in (8, 9, 10)]
    assert sum(p.weight for p in third) == pytest.approx(1.0)
    total = sum(instance_weight[t[i].instance_id] for i in (8, 9, 10))
    assert third[0].weight == pytest.approx(instance_weight[t[8].instance_id] / total)
    # Source 2 kept one instance (t6) of three: its weight becomes 1.
    assert pairs[t[6].id].weight == pytest.approx(1.0)

    # Agreement: alpha over the candidate positions of the picks, as the fixture cast them.
    with runtime.sessions() as session:
        stats = agreement(session, project_id)
    best = [[0, 0, 0], [0, 0], [0], [0, 1, 2], [0], [0, 0, 0, 1, 2, 1], [0, 0, 2]] + [[2, 2, 2]] * 4
    worst = [[1, 1, 2], [1, 1], [1], [1, 2, 0], [1], [1, 2, 1, 0, 0, 0], [1, 2, 1]] + [[0, 0, 0]] * 4
    for name, positions in (("best", best), ("worst", worst)):
        expected = krippendorff_alpha({i: Counter(p) for i, p in enumerate(positions)})
        assert stats[f"alpha_{name}"] == pytest.approx(expected)
    by_user = {a["user_id"]: a for a in stats["annotators"]}
    # u4 answered only t5. The others' best there is 0 (3 of 5), not u4's 1; the others' worst is 1 and
    # 0 twice each: no plurality, so the worst agreement rests on no task (u4's own 0 does not count).
    assert by_user[u[3]]["picks"] == 1
    assert (by_user[u[3]]["best_agreement"], by_user[u[3]]["best_tasks"]) == (0.0, 1)
    assert (by_user[u[3]]["worst_agreement"], by_user[u[3]]["worst_tasks"]) == (None, 0)
    # u1 agrees with the others' best wherever they have a unique plurality: t0, t1 (the skip left
    # out) and t7..t10; t3, t5 and t6 split the others, and u1 picked nothing in t2 and t4.
    assert (by_user[u[0]]["best_agreement"], by_user[u[0]]["best_tasks"]) == (1.0, 6)


def test_settings_and_snapshot_change_what_is_kept(runtime: Runtime, voted) -> None:
    project_id, t, u = voted
    with runtime.sessions() as session:
        newest = newest_vote_id(session, project_id)
        strict = aggregate(session, project_id, newest, AggregationSettings(min_agreement=0.7))
        no_images = aggregate(session, project_id, newest, AggregationSettings(image_level=False))
        lenient = aggregate(session, project_id, newest, AggregationSettings(min_votes=2))
    assert strict.drops["low_agreement"] == 2  # t0 (worst) and t6 (both): 2 of 3 is under 0.7
    assert t[6].id not in {p.task_id for p in strict.pairs}
    assert all(p.instance_id is not None for p in no_images.pairs)
    assert "no_plurality" not in no_images.drops  # t3 was an image-level task
    assert "too_few_votes" not in lenient.drops and t[1].id in {p.task_id for p in lenient.pairs}

    # The snapshot boundary: votes after it do not count.
    vote(runtime, t[1], u[3])  # t1 now has 3 answers, but after the snapshot
    with runtime.sessions() as session:
        before = aggregate(session, project_id, newest, AggregationSettings())
        after = aggregate(session, project_id, newest_vote_id(session, project_id), AggregationSettings())
    assert before.drops["too_few_votes"] == 1 and "too_few_votes" not in after.drops
    assert len(after.pairs) == len(before.pairs) + 1


def test_krippendorff_alpha_by_hand() -> None:
    # Two coders, units (a, a), (b, b), (a, b): n = 6, observed 2, expected 36 - 18 = 18.
    assert krippendorff_alpha({1: Counter(a=2), 2: Counter(b=2), 3: Counter(a=1, b=1)}) == pytest.approx(
        1 - 5 * 2 / 18
    )
    assert krippendorff_alpha({1: Counter(a=3), 2: Counter(b=2), 3: Counter(c=1)}) == 1.0
    assert krippendorff_alpha({1: Counter(a=1)}) is None  # nothing pairable
    assert krippendorff_alpha({1: Counter(a=2), 2: Counter(a=3)}) is None  # one value only
