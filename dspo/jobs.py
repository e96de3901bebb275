"""One small job layer: the same job code runs in-process (embedded mode) or on a Celery worker.

A job is a row in ``jobs``; its handler is found by kind in the entry-point group ``dspo.jobs``
(pyproject.toml), so this shared core runs the worker's code without importing the worker package.
Handlers must be idempotent: a job can run again after a crash (Celery redelivers it, acks_late).
"""

import logging
import threading
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dspo.db import session_scope, utcnow
from dspo.models import Job
from dspo.runtime import Runtime

log = logging.getLogger(__name__)

CELERY_TASK_NAME = "dspo.run_job"


@dataclass
class JobSpec:
    kind: str
    payload: dict[str, Any]
    project_id: int | None = None


@dataclass
class JobContext:
    """What a handler gets: the job's row data, the runtime, progress reporting and follow-up jobs."""

    job_id: int
    kind: str
    payload: dict[str, Any]
    runtime: Runtime
    follow_ups: list[JobSpec] = field(default_factory=list)

    def progress(self, fraction: float, message: str = "") -> None:
        with session_scope(self.runtime.sessions) as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(progress=min(max(fraction, 0.0), 1.0), message=message)
            )

    def then(self, kind: str, payload: dict[str, Any], project_id: int | None = None) -> None:
        """Queue another job once this one has succeeded."""
        self.follow_ups.append(JobSpec(kind, payload, project_id))


Handler = Callable[[JobContext], dict[str, Any] | None]


@cache
def handlers() -> dict[str, Handler]:
    return {ep.name: ep.load() for ep in entry_points(group="dspo.jobs")}


def submit(runtime: Runtime, specs: Iterable[JobSpec]) -> list[int]:
    """Create job rows, commit them, then hand them to the in-process pool or the broker."""
    with session_scope(runtime.sessions) as session:
        job_ids = _create(session, specs)
    for job_id in job_ids:
        dispatch(runtime, job_id)
    return job_ids


def _create(session: Session, specs: Iterable[JobSpec]) -> list[int]:
    known = handlers()
    jobs = []
    for spec in specs:
        if spec.kind not in known:
            raise ValueError(f"unknown job kind {spec.kind!r}; known: {', '.join(sorted(known))}")
        jobs.append(Job(kind=spec.kind, payload=spec.payload, project_id=spec.project_id))
    session.add_all(jobs)
    session.flush()
    return [job.id for job in jobs]


def resume_unfinished(runtime: Runtime) -> int:
    """Dispatch again the jobs an in-process pool lost when its process stopped."""
    with session_scope(runtime.sessions) as session:
        job_ids = list(session.scalars(select(Job.id).where(Job.state.in_(("queued", "running")))))
    for job_id in job_ids:
        dispatch(runtime, job_id)
    return len(job_ids)


def dispatch(runtime: Runtime, job_id: int, queue: str | None = None) -> None:
    """Run the job in this process's pool, or send it to the workers of `queue` (Celery's default
    queue when None); in-process mode has one pool for every queue."""
    if runtime.settings.jobs_in_process:
        _executor(runtime).submit(_run_logged, runtime, job_id)
    else:
        _celery_client(runtime.settings.broker_url, runtime.settings.redis_key_prefix).send_task(
            CELERY_TASK_NAME, args=[job_id], queue=queue
        )


def _run_logged(runtime: Runtime, job_id: int) -> None:
    try:
        run_job(runtime, job_id)
    except Exception:
        log.exception("job %s crashed outside its handler", job_id)


_executors: dict[int, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(runtime: Runtime) -> ThreadPoolExecutor:
    with _executors_lock:
        key = id(runtime)
        if key not in _executors:
            _executors[key] = ThreadPoolExecutor(
                runtime.settings.inprocess_job_threads, thread_name_prefix="dspo-job"
            )
        return _executors[key]


def shutdown_executor(runtime: Runtime) -> None:
    with _executors_lock:
        executor = _executors.pop(id(runtime), None)
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=False)


@cache
def _celery_client(broker_url: str, key_prefix: str):  # type: ignore[no-untyped-def]
    from celery import Celery

    return Celery("dspo-client", broker=broker_url, broker_transport_options=transport_options(key_prefix))


def transport_options(key_prefix: str) -> dict[str, Any]:
    """Redis transport options shared by the client and the worker: a key prefix keeps installations
    (and test runs) that share one Redis apart."""
    return {"global_keyprefix": f"{key_prefix}:", "visibility_timeout": 3600}


def run_job(runtime: Runtime, job_id: int) -> str:
    """Run one job to the end and record its outcome; returns the final state."""
    with session_scope(runtime.sessions) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        if job.state in ("succeeded", "failed"):
            return job.state
        job.state, job.started_at, job.attempts = "running", utcnow(), job.attempts + 1
        job.error = None
        ctx = JobContext(job.id, job.kind, dict(job.payload), runtime)

    log.info("job %s (%s) started: %s", job_id, ctx.kind, ctx.payload)
    try:
        result = handlers()[ctx.kind](ctx)
    except Exception as exc:
        log.error("job %s (%s) failed: %s\n%s", job_id, ctx.kind, exc, traceback.format_exc())
        _finish(runtime, job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    for follow_up in _finish(runtime, job_id, "succeeded", result=result or {}, follow_ups=ctx.follow_ups):
        dispatch(runtime, follow_up)
    log.info("job %s (%s) succeeded", job_id, ctx.kind)
    return "succeeded"


def _finish(
    runtime: Runtime,
    job_id: int,
    state: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    follow_ups: Iterable[JobSpec] = (),
) -> list[int]:
    """Record the outcome and create the follow-up jobs in the same transaction, so that a chain is
    never half-written; returns the follow-up job ids to dispatch."""
    with session_scope(runtime.sessions) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state, job.finished_at, job.error, job.result = state, utcnow(), error, result
        if state == "succeeded":
            job.progress = 1.0
        return _create(session, follow_ups)
