"""Dawid-Skene aggregation: each annotator's choices weighed by an accuracy estimated by EM.

The classes. Dawid and Skene's model gives each annotator a confusion matrix over K classes that every
item shares. A best-of-N task has no such classes: its candidates are that source's own images, so
"candidate 2 of task 7" and "candidate 2 of task 8" have nothing in common. Two stand-ins exist, and
neither fits:

- the generator position (Candidate.position): a K×K confusion per annotator would learn "this
  annotator prefers generator 1", which is the very signal a dataset collects (which generator is
  better *in this region*), and a class prior would pull every uncertain task towards the generator
  that wins most often, erasing the per-region counter-examples DSPO trains on. It also needs K²
  parameters per annotator, which a sparse annotator cannot fill;
- the shown position (dspo.assign.shown_order, shuffled per annotator and task): the true best sits at
  a different shown position for each annotator, so there is no class shared by the voters of a task.

So this is the one-coin ("homogeneous errors") model: annotator a picks the task's true best candidate
with probability p_a, and otherwise one of the other N - 1 candidates uniformly. It needs one number
per annotator, works for any N and any candidates, and a position-biased annotator (one who always
picks the first shown image, which shown_order makes a uniform draw over the candidates) comes out at
p_a ≈ 1/N, i.e. weight 0. The worst choice is fitted separately, with its own p_a (spotting the worst
artefact is not the same skill as ranking the best).

The posterior of candidate c of task t is, with a uniform prior over the task's candidates,
    P(c) ∝ exp(Σ_{votes v on t that chose c} w_a(v)),   w_a = log(p_a (N - 1) / (1 - p_a)),
so EM is a few bincounts per iteration over flat arrays, one element per vote. Choices:

- Weights are at least 0 (p_a is taken as no worse than chance): an annotator below chance is noise
  here, not an oracle to read backwards, and a negative weight would make a candidate nobody chose win.
- The M-step is the MAP estimate under a Beta prior (PRIOR_CORRECT, PRIOR_WRONG pseudo-votes, mean
  0.5): an annotator with three votes is not believed to be perfect after agreeing three times, and an
  unseen one starts at weight log(N - 1) (0 for pairs), no more than a plain vote.
- Start: the posteriors are the vote shares (plurality), then M-step, E-step... until no accuracy moves
  by more than `tol`, or `max_iter` iterations. The input order is fixed by the caller and every step
  is a deterministic numpy reduction: the same votes give the same bits.
- Candidates nobody chose still hold posterior mass (exp(0) each), so a task's winner can be tied with
  them when every voter weighs 0: such a task has no winner (`tied`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo.models import Candidate, Source, Task, Vote

PRIOR_CORRECT = 1.0
PRIOR_WRONG = 1.0
TOL = 1e-6
MAX_ITER = 200
# Posteriors closer than this (relative) are a tie: exact ties of the model come out of sums taken in
# different orders, a few ulps apart.
TIE = 1e-9


@dataclass(frozen=True)
class Fit:
    """Per task (in `tasks` order): the chosen candidate, its posterior, the best other candidate's
    posterior (voted or not), and whether those two tie; per annotator (in `annotators` order): the
    estimated accuracy."""

    tasks: np.ndarray
    choice: np.ndarray
    posterior: np.ndarray
    runner_up: np.ndarray
    tied: np.ndarray
    votes_for_choice: np.ndarray
    annotators: np.ndarray
    accuracy: np.ndarray
    iterations: int
    converged: bool

    def report(self) -> dict[str, object]:
        return {
            "iterations": self.iterations,
            "converged": self.converged,
            "annotators": len(self.annotators),
            "tasks": len(self.tasks),
        }


def fit(
    task: np.ndarray,
    annotator: np.ndarray,
    choice: np.ndarray,
    n_candidates: np.ndarray,
    *,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> Fit:
    """One-coin Dawid-Skene over votes given as parallel arrays (one element per vote): task id,
    annotator id, chosen candidate id (non-negative ints), and the task's number of candidates N ≥ 2.
    An annotator answers a task at most once; the result does not depend on the order of the votes."""
    task, annotator, choice = (np.asarray(a, np.int64) for a in (task, annotator, choice))
    n_candidates = np.asarray(n_candidates, np.float64)
    if len(task) == 0:
        raise ValueError("no votes to fit")
    if n_candidates.min() < 2:
        raise ValueError("every task needs at least two candidates")
    if max_iter < 1:
        raise ValueError("max_iter must be at least 1")
    # Canonical order (task, annotator), so that the float sums below do not depend on the input order.
    order = np.lexsort((annotator, task))
    task, annotator, choice, n_candidates = task[order], annotator[order], choice[order], n_candidates[order]

    tasks, task_idx = np.unique(task, return_inverse=True)
    annotators, ann_idx = np.unique(annotator, return_inverse=True)
    # A slot is one (task, chosen candidate): sorted by task, so each task's slots are contiguous.
    width = int(choice.max()) + 1
    slots, slot_of_vote = np.unique(task_idx * width + choice, return_inverse=True)
    slot_of_vote = slot_of_vote.reshape(-1)
    slot_task, slot_choice = slots // width, slots % width
    starts = np.flatnonzero(np.r_[True, np.diff(slot_task) != 0])
    n_task = np.zeros(len(tasks))
    n_task[task_idx] = n_candidates  # N of each task (every vote of a task carries the same N)
    voted = np.diff(np.r_[starts, len(slot_task)])  # candidates chosen at least once, per task
    unvoted = n_task - voted
    # Only votes on tasks that someone else answered too say anything about an annotator: alone, a vote
    # agrees with itself.
    shared = (np.bincount(task_idx) > 1)[task_idx].astype(np.float64)
    n_per_annotator = np.bincount(ann_idx, weights=shared, minlength=len(annotators))
    votes_per_slot = np.bincount(slot_of_vote, minlength=len(slot_task))

    # Start from plurality: a slot's posterior is its share of the task's votes.
    posterior = votes_per_slot / np.add.reduceat(votes_per_slot, starts)[slot_task]
    accuracy = np.zeros(len(annotators))
    iterations, converged = 0, False
    while iterations < max_iter:
        iterations += 1
        correct = np.bincount(ann_idx, weights=posterior[slot_of_vote] * shared, minlength=len(annotators))
        new_accuracy = (correct + PRIOR_CORRECT) / (n_per_annotator + PRIOR_CORRECT + PRIOR_WRONG)
        converged = bool(np.max(np.abs(new_accuracy - accuracy)) < tol)
        accuracy = new_accuracy
        score = _scores(accuracy, ann_idx, n_candidates, slot_of_vote, len(slot_task))
        posterior, unvoted_each = _posteriors(score, slot_task, starts, unvoted)
        if converged:
            break

    # Each task's top slot: sort by (task, -posterior, candidate id), the first of each task wins.
    ranked = np.lexsort((slot_choice, -posterior, slot_task))
    top = ranked[starts]
    second = ranked[np.minimum(starts + 1, len(ranked) - 1)]  # the next slot, when the task has one
    second_voted = np.where(voted > 1, posterior[second], 0.0)
    runner_up = np.maximum(second_voted, np.where(unvoted > 0, unvoted_each, 0.0))
    return Fit(
        tasks=tasks,
        choice=slot_choice[top],
        posterior=posterior[top],
        runner_up=runner_up,
        tied=runner_up >= posterior[top] * (1 - TIE),
        votes_for_choice=votes_per_slot[top],
        annotators=annotators,
        accuracy=accuracy,
        iterations=iterations,
        converged=converged,
    )


def _scores(
    accuracy: np.ndarray,
    ann_idx: np.ndarray,
    n_candidates: np.ndarray,
    slot_of_vote: np.ndarray,
    n_slots: int,
) -> np.ndarray:
    """Σ of the voters' log-odds weights per slot; a weight is never negative (see the module's doc)."""
    p = np.clip(accuracy[ann_idx], 1e-12, 1 - 1e-12)
    weight = np.maximum(np.log(p * (n_candidates - 1) / (1 - p)), 0.0)
    return np.bincount(slot_of_vote, weights=weight, minlength=n_slots)


def _posteriors(
    score: np.ndarray, slot_task: np.ndarray, starts: np.ndarray, unvoted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of the scores within each task, the unvoted candidates counted at score 0; returns the
    slots' posteriors and, per task, the posterior of each unvoted candidate."""
    top = np.maximum(np.maximum.reduceat(score, starts), 0.0)  # ≥ 0: unvoted candidates score 0
    e = np.exp(score - top[slot_task])
    e_unvoted = np.exp(-top)
    z = np.add.reduceat(e, starts) + unvoted * e_unvoted
    return e / z[slot_task], e_unvoted / z


def reweigh(
    session: Session, project_id: int, max_vote_id: int, rows: Sequence[Any]
) -> tuple[list[Any], dict[str, Any]]:
    """dspo.aggregate's per-task rows with winner and loser chosen by Dawid-Skene instead of plurality.

    The fit uses the picks of the rows' tasks only (what aggregation keeps out, held-out sources and
    evaluation rounds among them, weighs nobody). A row of a task with picks gets the chosen candidates
    (best_id, win_sha, width, height; worst_id, lose_sha), the votes for them (best_n, worst_n, so that
    the records' shares stay vote shares), their posteriors (best_p, worst_p) and whether they tie
    (best_tied, worst_tied). Returns the rows and the fits' report for the manifest."""
    found = session.execute(
        select(Vote.task_id, Vote.user_id, Vote.best_candidate_id, Vote.worst_candidate_id)
        .join(Task, Task.id == Vote.task_id)
        .where(
            Task.project_id == project_id,
            Vote.id <= max_vote_id,
            Vote.outcome == "pick",
            Vote.best_candidate_id.is_not(None),
            Vote.worst_candidate_id.is_not(None),
        )
    ).all()
    # Column by column: numpy asked to convert Row objects probes each one for array attributes.
    picks = np.array([list(column) for column in zip(*found, strict=True)] or [[]] * 4, np.int64)
    candidates = {
        cid: (source_id, sha, width, height)
        for cid, source_id, sha, width, height in session.execute(
            select(Candidate.id, Candidate.source_id, Candidate.sha256, Candidate.width, Candidate.height)
            .join(Source, Source.id == Candidate.source_id)
            .where(Source.project_id == project_id, Candidate.evaluation_id.is_(None))
        )
    }
    per_source = Counter(source_id for source_id, *_ in candidates.values())
    # The rows come sorted by task id: each pick finds its row (and its task's N) by binary search.
    row_tasks = np.array([row.task_id for row in rows], np.int64)
    row_n = np.array([per_source[row.source_id] for row in rows], np.int64)
    at = np.minimum(np.searchsorted(row_tasks, picks[0]), max(len(rows) - 1, 0))
    kept = (row_tasks[at] == picks[0]) if len(rows) else np.zeros(len(picks[0]), bool)
    task, user, best_choice, worst_choice = picks[:, kept]
    if len(task) == 0:
        return list(rows), {}
    n = row_n[at[kept]]
    best = fit(task, user, best_choice, n)
    worst = fit(task, user, worst_choice, n)
    # Every task with a pick is in both fits, in the same (sorted) order.
    decided = dict(zip(best.tasks.tolist(), range(len(best.tasks)), strict=True))
    out = []
    for row in rows:
        i = decided.get(row.task_id)
        if i is None:
            out.append(row)
            continue
        win, lose = int(best.choice[i]), int(worst.choice[i])
        _, win_sha, width, height = candidates[win]
        out.append(
            SimpleNamespace(
                **{
                    **row._asdict(),
                    "best_id": win,
                    "win_sha": win_sha,
                    "width": width,
                    "height": height,
                    "best_n": int(best.votes_for_choice[i]),
                    "best_p": float(best.posterior[i]),
                    "best_tied": bool(best.tied[i]),
                    "worst_id": lose,
                    "lose_sha": candidates[lose][1],
                    "worst_n": int(worst.votes_for_choice[i]),
                    "worst_p": float(worst.posterior[i]),
                    "worst_tied": bool(worst.tied[i]),
                }
            )
        )
    return out, {"best": best.report(), "worst": worst.report()}
