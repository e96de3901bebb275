"""Plurality against Dawid-Skene on simulated votes of annotators whose accuracy is known (docs/datasets.md).

    python bench/aggregation.py                 # seeded; prints a Markdown table; about 20 s
    python bench/aggregation.py --tasks 1000 --seed 1

Each team answers best-of-4 tasks whose true best and worst are drawn at random. Annotators:
- careful: the true best with probability 0.9, else another candidate at random; the same for the worst;
- fair: the same with 0.65;
- random: a best at random, a worst at random among the others;
- first-shown: always the first image as shown to them (dspo.assign.shown_order, shuffled per
  annotator and task) as best, and the last as worst.
Each task gets k annotators of the team, drawn at random. The votes go into a real SQLite database
(the migrated schema, one project per team and k) and through the real aggregation (dspo.aggregate);
a task whose record has the true winner (loser) counts as recovered, a dropped task as not.

Columns: at min_agreement 0 (every task with a unique choice is kept), the share of tasks kept and the
share whose winner, loser, and both are the true ones; at the default min_agreement 0.5, the share of
tasks kept and the share of those records whose winner or loser is wrong. Last, the EM alone on a
million votes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/aggregation.py` from the root

from dspo.aggregate import AggregationSettings, aggregate, newest_vote_id  # noqa: E402
from dspo.assign import shown_order  # noqa: E402
from dspo.dawid_skene import fit  # noqa: E402
from dspo.db import make_engine  # noqa: E402
from dspo.migrate import upgrade  # noqa: E402
from dspo.models import Candidate, Project, Source, Task, User, Vote  # noqa: E402

N = 4
ACCURACY = {"careful": 0.9, "fair": 0.65}  # random and first-shown have none of their own
TEAMS = {
    "3 careful, 1 random, 1 first-shown": ["careful"] * 3 + ["random", "first-shown"],
    "2 careful, 2 fair, 2 random, 1 first-shown": ["careful"] * 2
    + ["fair"] * 2
    + ["random"] * 2
    + ["first-shown"],
    "1 careful, 3 fair, 3 random, 1 first-shown": ["careful"]
    + ["fair"] * 3
    + ["random"] * 3
    + ["first-shown"],
}
KS = (3, 5)


@dataclass(frozen=True)
class Truth:
    best: dict[int, int]  # task id -> candidate id
    worst: dict[int, int]


def answer(
    kind: str, task_id: int, user_id: int, ids: list[int], best: int, worst: int, rng
) -> tuple[int, int]:
    """One annotator's (best, worst) candidate ids."""
    if kind == "first-shown":
        shown = shown_order(task_id, user_id, ids)
        return shown[0], shown[-1]
    if kind == "random":
        chosen = rng.choice(ids)
        return int(chosen), int(rng.choice([c for c in ids if c != chosen]))
    p = ACCURACY[kind]
    chosen = best if rng.random() < p else int(rng.choice([c for c in ids if c != best]))
    others = [c for c in ids if c != chosen]
    if worst != chosen and rng.random() < p:
        return chosen, worst
    return chosen, int(rng.choice([c for c in others if c != worst] or others))


def simulate(
    session: Session, team: list[str], k: int, n_tasks: int, rng: np.random.Generator
) -> tuple[int, Truth]:
    """A project of n_tasks image-level tasks with N candidates each, answered by k of the team per task."""
    tag = uuid.uuid4().hex[:8]
    project = Project(name=f"bench-{tag}", n_candidates=N, overlap=k)
    session.add(project)
    session.flush()
    users = []
    for i, kind in enumerate(team):
        user = User(username=f"{tag}-{i}-{kind}", password_hash="-", role="annotator")
        session.add(user)
        users.append((user, kind))
    session.flush()
    sources = session.scalars(
        insert(Source).returning(Source.id),
        [
            {
                "project_id": project.id,
                "upload_sha256": f"{tag}{t:056d}",
                "kind": "lq",
                "lq_sha256": f"{t:064d}",
                "width": 8,
                "height": 8,
                "state": "ready",
            }
            for t in range(n_tasks)
        ],
    ).all()
    session.execute(
        insert(Candidate),
        [
            {
                "source_id": s,
                "position": p,
                "sha256": f"{s:032d}{p:032d}",
                "width": 32,
                "height": 32,
                "generator": "bench",
                "model": "bench",
                "seed": p,
            }
            for s in sources
            for p in range(N)
        ],
    )
    task_ids = session.scalars(
        insert(Task).returning(Task.id),
        [{"project_id": project.id, "source_id": s, "kind": "image", "required_votes": k} for s in sources],
    ).all()
    candidates: dict[int, list[int]] = {}
    for source_id, candidate_id in session.execute(
        select(Candidate.source_id, Candidate.id)
        .where(Candidate.source_id.in_(sources))
        .order_by(Candidate.id)
    ):
        candidates.setdefault(source_id, []).append(candidate_id)
    truth = Truth({}, {})
    votes = []
    for task_id, source_id in zip(task_ids, sources, strict=True):
        ids = candidates[source_id]
        best, worst = (int(c) for c in rng.choice(ids, 2, replace=False))
        truth.best[task_id], truth.worst[task_id] = best, worst
        for u in rng.choice(len(users), k, replace=False):
            user, kind = users[u]
            chosen_best, chosen_worst = answer(kind, task_id, user.id, ids, best, worst, rng)
            votes.append(
                {
                    "task_id": task_id,
                    "user_id": user.id,
                    "outcome": "pick",
                    "best_candidate_id": chosen_best,
                    "worst_candidate_id": chosen_worst,
                    "shown_order": shown_order(task_id, user.id, ids),
                    "client_submission_id": uuid.uuid4().hex,
                }
            )
    session.execute(insert(Vote), votes)
    session.commit()
    return project.id, truth


def measure(session: Session, project_id: int, truth: Truth, method: str) -> list[float]:
    newest = newest_vote_id(session, project_id)
    every = aggregate(session, project_id, newest, AggregationSettings(min_agreement=0.0, method=method))
    winner = sum(p.winner_candidate_id == truth.best[p.task_id] for p in every.pairs)
    loser = sum(p.loser_candidate_id == truth.worst[p.task_id] for p in every.pairs)
    both = sum(
        p.winner_candidate_id == truth.best[p.task_id] and p.loser_candidate_id == truth.worst[p.task_id]
        for p in every.pairs
    )
    default = aggregate(session, project_id, newest, AggregationSettings(method=method))
    wrong = sum(
        p.winner_candidate_id != truth.best[p.task_id] or p.loser_candidate_id != truth.worst[p.task_id]
        for p in default.pairs
    )
    tasks, kept = len(truth.best), len(default.pairs)
    return [
        len(every.pairs) / tasks,
        winner / tasks,
        loser / tasks,
        both / tasks,
        kept / tasks,
        wrong / max(1, kept),
    ]


def em_speed(votes: int, rng: np.random.Generator) -> str:
    """The EM alone on `votes` votes: k = 4 distinct annotators per task (a random first one, then steps
    of a random stride under 50, so no one twice), 200 annotators of accuracy 0.3..0.95."""
    k, team = 4, 200
    tasks = votes // k
    accuracy = rng.uniform(0.3, 0.95, team)
    task = np.repeat(np.arange(tasks), k)
    stride = np.repeat(rng.integers(1, 50, tasks), k)
    annotator = (np.repeat(rng.integers(0, team, tasks), k) + stride * np.tile(np.arange(k), tasks)) % team
    truth = rng.integers(0, N, tasks)[task]
    right = rng.random(len(task)) < accuracy[annotator]
    choice = task * N + np.where(right, truth, (truth + rng.integers(1, N, len(task))) % N)
    start = time.perf_counter()
    result = fit(task, annotator, choice, np.full(len(task), N))
    seconds = time.perf_counter() - start
    recovered = np.mean(result.choice == result.tasks * N + truth[::k])
    return (
        f"EM alone on {len(task):,} votes ({tasks:,} tasks, {team} annotators): {seconds:.1f} s, "
        f"{result.iterations} iterations, converged {result.converged}; true best recovered: {recovered:.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=400, help="tasks per team and k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--em-votes", type=int, default=1_000_000, help="votes for the EM timing (0: skip)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.tasks} tasks of N = {N} per row, seed {args.seed}\n")
    print(
        "| team | k | method | kept | winner right | loser right | both right | kept at 0.5 "
        "| wrong among those |\n|---|---|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        upgrade(url)
        engine = make_engine(url)
        sessions = sessionmaker(engine, expire_on_commit=False)
        for name, team in TEAMS.items():
            for k in KS:
                with sessions() as session:
                    project_id, truth = simulate(session, team, k, args.tasks, rng)
                    for method in ("plurality", "dawid_skene"):
                        numbers = " | ".join(f"{x:.1%}" for x in measure(session, project_id, truth, method))
                        print(f"| {name} | {k} | {method} | {numbers} |")
        engine.dispose()
    if args.em_votes:
        print("\n" + em_speed(args.em_votes, rng))


if __name__ == "__main__":
    main()
