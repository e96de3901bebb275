"""A reviewer's decision in aggregation, on SQLite and PostgreSQL: it overrides the votes of its task
(a pair whatever they say, even too few of them; or no record), the newest review of a task counts,
and reviews after a dataset's review snapshot do not."""

from sqlalchemy import select

from dspo.aggregate import Aggregate, AggregationSettings, aggregate, newest_review_id, newest_vote_id
from dspo.db import session_scope
from dspo.models import Review
from dspo.runtime import Runtime
from tests.datasets.helpers import TaskInfo, make_project, tasks, users, vote


def review(runtime: Runtime, task: TaskInfo, reviewer_id: int, best: int | None, worst: int | None) -> int:
    """Store a review (positions, or None for no pair); returns its id."""
    with session_scope(runtime.sessions) as session:
        row = Review(
            task_id=task.id,
            reviewer_id=reviewer_id,
            decision="no_pair" if best is None else "pair",
            best_candidate_id=None if best is None else task.candidates[best],
            worst_candidate_id=None if worst is None else task.candidates[worst],
        )
        session.add(row)
        session.flush()
        return row.id


def test_reviews_override_the_votes_of_their_tasks_up_to_the_snapshot(runtime: Runtime) -> None:
    project_id = make_project(runtime, n_sources=1)  # k = 3
    t0, t1, t2 = tasks(runtime, project_id)[:3]
    u = users(runtime, ["v1", "v2", "v3", "reviewer"])
    for user_id in u[:3]:
        vote(runtime, t0, user_id, best=0, worst=1)  # unanimous
    vote(runtime, t1, u[0], best=2, worst=1)  # one answer of three
    vote(runtime, t2, u[0], outcome="tie")
    vote(runtime, t2, u[1], outcome="tie")
    vote(runtime, t2, u[2])
    no_pair_t0 = review(runtime, t0, u[3], None, None)
    pair_t1 = review(runtime, t1, u[3], 2, 0)
    pair_t2 = review(runtime, t2, u[3], 1, 2)

    def run(max_review_id: int) -> Aggregate:
        with runtime.sessions() as session:
            newest = newest_vote_id(session, project_id)
            return aggregate(session, project_id, newest, AggregationSettings(), max_review_id)

    votes_only = run(0)
    assert [p.task_id for p in votes_only.pairs] == [t0.id] and votes_only.reviewed == 0
    assert votes_only.dropped == {t1.id: "too_few_votes", t2.id: "tie"}

    # Up to the second review: t0 gives no record, t1 the reviewer's pair; t2's review came later.
    snapshot = run(pair_t1)
    assert snapshot.dropped == {t0.id: "review_no_pair", t2.id: "tie"}
    assert snapshot.drops == {"review_no_pair": 1, "tie": 1}
    (pair,) = snapshot.pairs
    assert (pair.task_id, pair.winner_candidate_id, pair.loser_candidate_id) == (
        t1.id,
        t1.candidates[2],
        t1.candidates[0],
    )
    # Its shares are those of the votes that chose the reviewer's winner (1 of 1) and loser (none).
    assert (pair.votes, pair.best_share, pair.worst_share) == (1, 1.0, 0.0)
    assert snapshot.reviewed == 1 and no_pair_t0 < pair_t1

    # A later review of t0 replaces its first one.
    again_t0 = review(runtime, t0, u[3], 1, 0)
    with runtime.sessions() as session:
        assert newest_review_id(session, project_id) == again_t0 > pair_t2
        history = session.scalars(
            select(Review.decision).where(Review.task_id == t0.id).order_by(Review.id)
        ).all()
    assert history == ["no_pair", "pair"]
    latest = run(again_t0)
    assert latest.reviewed == 3 and not latest.drops
    chosen = {p.task_id: (p.winner_candidate_id, p.loser_candidate_id) for p in latest.pairs}
    assert chosen == {
        t0.id: (t0.candidates[1], t0.candidates[0]),
        t1.id: (t1.candidates[2], t1.candidates[0]),
        t2.id: (t2.candidates[1], t2.candidates[2]),
    }


def test_a_review_overrides_a_task_that_dawid_skene_decided(runtime: Runtime) -> None:
    project_id = make_project(runtime, n_sources=1)  # k = 3
    t0, t1 = tasks(runtime, project_id)[:2]
    u = users(runtime, ["v1", "v2", "v3", "reviewer"])
    for task in (t0, t1):
        for user_id in u[:3]:
            vote(runtime, task, user_id, best=0, worst=1)
    reviewed = review(runtime, t0, u[3], 2, 0)
    with runtime.sessions() as session:
        newest = newest_vote_id(session, project_id)
        result = aggregate(session, project_id, newest, AggregationSettings(method="dawid_skene"), reviewed)
    chosen = {p.task_id: (p.winner_candidate_id, p.loser_candidate_id) for p in result.pairs}
    assert chosen == {
        t0.id: (t0.candidates[2], t0.candidates[0]),  # the reviewer's, not the fit's
        t1.id: (t1.candidates[0], t1.candidates[1]),
    }
    assert result.reviewed == 1 and result.fit
