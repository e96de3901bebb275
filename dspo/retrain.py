"""Scheduled retraining (SPEC §1.8): a periodic tick (Celery beat) builds a dataset once a project has
K new accepted votes since its last dataset, and queues a training job on the `gpu` queue once that
dataset is published. Both steps are idempotent, so a repeated or concurrent tick does nothing twice.

The chain goes on through dspo.services.evaluations: a training job starts an evaluation round of its
model (the project's retrain_evaluate), and the tick closes every round whose tasks are all complete,
which promotes the model when the project's auto_promote and the round's numbers say so."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from dspo import jobs
from dspo.datasets import BuildSettings, request_dataset
from dspo.db import session_scope, utcnow
from dspo.models import Dataset, Job, Project, Task, Vote
from dspo.runtime import Runtime
from dspo.services import evaluations

TRAIN_JOB = "train_model"
GPU_QUEUE = "gpu"


def dispatch_to_gpu(runtime: Runtime, job_id: int) -> None:
    """Send a job to the workers of the `gpu` queue (`dspo worker --queues gpu`)."""
    jobs.dispatch(runtime, job_id, queue=GPU_QUEUE)


def new_votes(runtime: Runtime, project_id: int, after_vote_id: int) -> int:
    """Accepted answers (skips and evaluation answers do not count) with an id above the last
    dataset's snapshot."""
    with runtime.sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Vote)
                .join(Task, Task.id == Vote.task_id)
                .where(
                    Task.project_id == project_id,
                    Task.evaluation_id.is_(None),  # evaluation answers never make a dataset
                    Task.state != "gold",  # nor do gold answers
                    Vote.id > after_vote_id,
                    Vote.outcome != "skip",
                )
            )
            or 0
        )


def _maybe_build(runtime: Runtime, project: Any) -> int | None:
    with runtime.sessions() as session:
        last = session.scalars(
            select(Dataset).where(Dataset.project_id == project.id).order_by(Dataset.version.desc())
        ).first()
    if last is not None:
        if last.state in ("queued", "building"):
            return None  # one build at a time
        if last.retrain and last.created_at > utcnow() - timedelta(minutes=project.retrain_interval_minutes):
            return None
    if new_votes(runtime, project.id, last.max_vote_id if last else 0) < project.retrain_min_votes:
        return None
    settings = BuildSettings(**project.train_settings.get("dataset", {}))
    dataset_id, _, _ = request_dataset(
        runtime, project.id, settings, retrain=True, request_key=retrain_round_key(last)
    )
    return dataset_id


def retrain_round_key(last: Dataset | None) -> str:
    """The request key of the retraining round that follows dataset `last`: ticks that decide at the
    same time ask for the same key, and the unique key lets only one dataset be created."""
    return f"retrain-after-v{last.version if last else 0}"


def _queue_training(runtime: Runtime, project_id: int) -> list[int]:
    queued = []
    with runtime.sessions() as session:
        ready = session.scalars(
            select(Dataset.id).where(
                Dataset.project_id == project_id,
                Dataset.retrain.is_(True),
                Dataset.state == "published",
                Dataset.train_job_id.is_(None),
            )
        ).all()
    for dataset_id in ready:
        with session_scope(runtime.sessions) as session:
            job = Job(
                kind=TRAIN_JOB, payload={"dataset_id": dataset_id}, project_id=project_id, queue=GPU_QUEUE
            )
            session.add(job)
            session.flush()
            # The row is claimed for this job only if no other tick claimed it first.
            claimed = session.execute(
                update(Dataset)
                .where(Dataset.id == dataset_id, Dataset.train_job_id.is_(None))
                .values(train_job_id=job.id)
            ).rowcount  # type: ignore[attr-defined]
            if not claimed:
                session.rollback()
                continue
            job_id = job.id
        dispatch_to_gpu(runtime, job_id)
        queued.append(job_id)
    return queued


def retrain_tick(runtime: Runtime) -> dict[str, list[int]]:
    """One beat of the schedule, over every project with retraining on, and of every finished
    evaluation round; returns what it queued and closed."""
    with runtime.sessions() as session:
        projects = session.execute(
            select(
                Project.id,
                Project.retrain_min_votes,
                Project.retrain_interval_minutes,
                Project.train_settings,
            )
            .where(Project.retrain_min_votes.is_not(None))
            .order_by(Project.id)
        ).all()
    builds, trainings = [], []
    for project in projects:
        trainings += _queue_training(runtime, project.id)
        dataset_id = _maybe_build(runtime, project)
        if dataset_id is not None:
            builds.append(dataset_id)
    closed = evaluations.close_finished(runtime)
    return {"datasets": builds, "training_jobs": trainings, "evaluations_closed": closed}
