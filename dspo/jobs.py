"""One small job layer: the same job code runs in-process (embedded mode) or on a Celery worker.

A job is a row in ``jobs``; its handler is found by kind in the entry-point group ``dspo.jobs``
(pyproject.toml), so this shared core runs the worker's code without importing the worker package.

The database, not the broker, decides what runs (so that jobs recover by themselves):
- a job row is written in the same transaction as what it works on, and its message is sent after the
  commit (`dispatch`); a broker that cannot be reached leaves the job queued with no message, and the
  relay (`relay`, a periodic tick) sends it once the broker is back;
- a delivery claims its job in one transaction (`_claim`): a queued job, or a running one whose worker
  is gone; any other delivery (a duplicate, a redelivery of a job that runs or ran) is dropped, so a
  job never runs twice at once, whatever the broker redelivers;
- a running job writes a heartbeat (with its process's memory); the sweeper (`sweep`, a periodic tick)
  re-queues a job whose worker went silent, and fails it with the reason once it has used its
  attempts (DSPO_JOB_MAX_ATTEMPTS): the worker died that often while running it.
Handlers must be idempotent: a job can run again after its worker died. An exception in a handler
fails the job at once (it is not a worker's death; an admin can retry it).
"""

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from dspo.db import session_scope, utcnow
from dspo.models import Job
from dspo.runtime import Runtime
from dspo.settings import Settings

log = logging.getLogger(__name__)

CELERY_TASK_NAME = "dspo.run_job"
# A job whose first send is still in flight is not the relay's yet (a second message would be harmless,
# only wasted).
RELAY_GRACE = timedelta(seconds=5)
RELAY_BATCH = 1000


@dataclass
class JobSpec:
    kind: str
    payload: dict[str, Any]
    project_id: int | None = None
    queue: str | None = None  # the Celery queue (None: the default one)


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
        created = create(session, specs)
    for job in created:
        dispatch(runtime, job.id, job.queue)
    return [job.id for job in created]


def create(session: Session, specs: Iterable[JobSpec]) -> list[Job]:
    """Add job rows to the caller's transaction (flushed, so they have ids); the caller dispatches them
    after its commit, or leaves that to the relay."""
    known = handlers()
    jobs = []
    for spec in specs:
        if spec.kind not in known:
            raise ValueError(f"unknown job kind {spec.kind!r}; known: {', '.join(sorted(known))}")
        jobs.append(Job(kind=spec.kind, payload=spec.payload, project_id=spec.project_id, queue=spec.queue))
    session.add_all(jobs)
    session.flush()
    return jobs


def resume_unfinished(runtime: Runtime) -> int:
    """Dispatch again the jobs an in-process pool lost when its process stopped (a running one is taken
    over by its delivery: its worker, the old process, is gone)."""
    with session_scope(runtime.sessions) as session:
        rows = session.execute(select(Job.id, Job.queue).where(Job.state.in_(("queued", "running")))).all()
    for job_id, queue in rows:
        dispatch(runtime, job_id, queue)
    return len(rows)


def dispatch(runtime: Runtime, job_id: int, queue: str | None = None) -> bool:
    """Run the job in this process's pool, or send it to the workers of `queue` (Celery's default
    queue when None; in-process mode has one pool for every queue), and record when. Never raises: a
    broker that cannot be reached leaves the job queued for the relay. Returns whether it was sent."""
    if runtime.settings.jobs_in_process:
        _executor(runtime).submit(_run_logged, runtime, job_id)
    else:
        try:
            # No retries here: a request must not hang on a broker that is down; the relay retries.
            _celery_client(runtime.settings).send_task(
                CELERY_TASK_NAME, args=[job_id], queue=queue, retry=False
            )
        except Exception as exc:
            log.warning(
                "job %s stays queued, the relay sends it later: the broker refused it (%s)", job_id, exc
            )
            return False
    try:
        with session_scope(runtime.sessions) as session:
            session.execute(
                update(Job).where(Job.id == job_id, Job.state == "queued").values(dispatched_at=utcnow())
            )
    except SQLAlchemyError as exc:
        # The message is out; without the record the relay only sends it once more (a harmless duplicate).
        log.warning("job %s was sent but its dispatch time was not recorded: %s", job_id, exc)
    return True


def waits_for_dispatch(job: Job, settings: Settings) -> bool:
    """Whether a job is queued with no message on its way: never sent, or sent so long ago that the
    broker must have lost it (the relay's rule, without its grace for a first send in flight)."""
    resend_before = utcnow() - timedelta(seconds=settings.job_redispatch_seconds)
    return job.state == "queued" and (job.dispatched_at is None or job.dispatched_at < resend_before)


def relay(runtime: Runtime) -> list[int]:
    """Send the queued jobs whose message was never sent (the broker was down) or was sent
    DSPO_JOB_REDISPATCH_SECONDS ago and has not run (a broker that lost it); returns the ids sent.
    Periodic: the beat entry `relay-jobs`, or the embedded server's recovery thread."""
    now = utcnow()
    resend_before = now - timedelta(seconds=runtime.settings.job_redispatch_seconds)
    with runtime.read_sessions() as session:
        rows = session.execute(
            select(Job.id, Job.queue)
            .where(
                Job.state == "queued",
                or_(
                    and_(Job.dispatched_at.is_(None), Job.created_at < now - RELAY_GRACE),
                    Job.dispatched_at < resend_before,
                ),
            )
            .order_by(Job.id)
            .limit(RELAY_BATCH)
        ).all()
    sent = []
    for job_id, queue in rows:
        if not dispatch(runtime, job_id, queue):
            break  # the broker is down: the next tick tries again
        sent.append(job_id)
    if sent:
        log.info("relay sent %d queued jobs: %s", len(sent), sent)
    return sent


def sweep(runtime: Runtime) -> dict[str, list[int]]:
    """Re-queue the running jobs whose worker went silent (no heartbeat for DSPO_JOB_STALE_SECONDS),
    and fail those that have used DSPO_JOB_MAX_ATTEMPTS, saying why. Periodic: the beat entry
    `sweep-jobs`, or the embedded server's recovery thread."""
    settings = runtime.settings
    silent_since = utcnow() - timedelta(seconds=settings.job_stale_seconds)
    requeued: list[tuple[int, str | None]] = []
    failed: list[int] = []
    with session_scope(runtime.sessions) as session:
        stale = session.scalars(
            select(Job)
            .where(
                Job.state == "running",
                or_(
                    Job.heartbeat_at < silent_since,
                    and_(Job.heartbeat_at.is_(None), Job.started_at < silent_since),
                ),
            )
            .with_for_update(skip_locked=True)
        ).all()
        for job in stale:
            if job.attempts >= settings.job_max_attempts:
                _fail_died(job)
                failed.append(job.id)
            else:
                job.state, job.dispatched_at = "queued", None
                job.message = (
                    f"re-queued: its worker {job.worker} went silent at {_when(job.heartbeat_at)}"
                    f"{_memory(job)} (attempt {job.attempts} of {settings.job_max_attempts})"
                )
                requeued.append((job.id, job.queue))
    for job_id, queue in requeued:
        dispatch(runtime, job_id, queue)
    if requeued or failed:
        log.warning("sweeper: re-queued %s, failed %s (their workers died)", [j for j, _ in requeued], failed)
    return {"requeued": [j for j, _ in requeued], "failed": failed}


class RecoveryLoop:
    """The embedded mode's beat: a thread that runs the sweeper and the relay every
    min(DSPO_JOB_SWEEP_SECONDS, DSPO_JOB_RELAY_SECONDS) seconds (Celery beat does it otherwise)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="dspo-job-recovery", daemon=True)

    def start(self) -> "RecoveryLoop":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def _loop(self) -> None:
        settings = self.runtime.settings
        while not self.stopped.wait(min(settings.job_sweep_seconds, settings.job_relay_seconds)):
            try:
                sweep(self.runtime)
                relay(self.runtime)
            except Exception:
                log.exception("job recovery tick failed; the next one tries again")


def reset_for_retry(job: Job) -> None:
    """Make a job new again: queued, no attempts, no outcome (the caller commits and dispatches)."""
    job.state, job.attempts, job.progress, job.message = "queued", 0, 0.0, "retried"
    job.error = job.result = None
    job.started_at = job.finished_at = job.dispatched_at = job.heartbeat_at = None
    job.worker, job.worker_rss_bytes = None, None


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


def _celery_client(settings: Settings):  # type: ignore[no-untyped-def]
    return _client(settings.broker_url, settings.redis_key_prefix, settings.broker_visibility_timeout_seconds)


@cache
def _client(broker_url: str, key_prefix: str, visibility_timeout: int):  # type: ignore[no-untyped-def]
    from celery import Celery

    options = transport_options(key_prefix, visibility_timeout)
    return Celery("dspo-client", broker=broker_url, broker_transport_options=options)


def transport_options(key_prefix: str, visibility_timeout: int) -> dict[str, Any]:
    """Redis transport options shared by the client and the worker: a key prefix keeps installations
    (and test runs) that share one Redis apart; the visibility timeout is DSPO_BROKER_VISIBILITY_TIMEOUT
    _SECONDS (see dspo/settings.py: the database, not the timeout, keeps a job from running twice)."""
    return {"global_keyprefix": f"{key_prefix}:", "visibility_timeout": visibility_timeout}


# --- Running one job ----------------------------------------------------------------------------------


def worker_name() -> str:
    """Who runs a job: "host:pid" (a container's host name is its id)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux), else None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie is dead too
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        return False


def _owner_gone(job: Job, settings: Settings) -> bool:
    """Whether the worker that runs this job is gone: silent for too long, or a process of this host
    that exists no more (a pool process killed, whose job Celery redelivers at once)."""
    beat = job.heartbeat_at or job.started_at
    if beat is None or beat < utcnow() - timedelta(seconds=settings.job_stale_seconds):
        return True
    host, _, pid = (job.worker or "").rpartition(":")
    return (
        host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and _process_gone(int(pid))
    )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "an unknown time"


def _memory(job: Job) -> str:
    return f", last seen at {job.worker_rss_bytes / 1e9:.1f} GB" if job.worker_rss_bytes else ""


def _fail_died(job: Job) -> None:
    job.state, job.finished_at = "failed", utcnow()
    job.error = (
        f"the worker died {job.attempts} times while running this job{_memory(job)} "
        f"(last: {job.worker}, at {_when(job.heartbeat_at)}); too little memory for this input? "
        "Fix the cause, then retry the job (admin Jobs page, or POST /api/v1/jobs/{id}/retry)"
    ).replace("{id}", str(job.id))


@dataclass(frozen=True)
class _Run:
    """One attempt: its job, and the worker and attempt number that own the row while it runs."""

    ctx: JobContext
    worker: str
    attempt: int


def _claim(runtime: Runtime, job_id: int) -> _Run | str:
    """Take the job for this process, or say (its state) why not."""
    settings = runtime.settings
    with session_scope(runtime.sessions) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        if job.state in ("succeeded", "failed"):
            return job.state
        if job.state == "running":
            if not _owner_gone(job, settings):
                return "running"  # a duplicate delivery: its worker runs it
            if job.attempts >= settings.job_max_attempts:
                _fail_died(job)
                return "failed"
        now = utcnow()
        job.state, job.started_at, job.attempts, job.error = "running", now, job.attempts + 1, None
        job.worker, job.heartbeat_at, job.worker_rss_bytes = worker_name(), now, rss_bytes()
        return _Run(JobContext(job.id, job.kind, dict(job.payload), runtime), job.worker, job.attempts)


def _owned(run: _Run):  # type: ignore[no-untyped-def]
    """The condition under which this attempt still owns its job's row."""
    return and_(
        Job.id == run.ctx.job_id,
        Job.state == "running",
        Job.worker == run.worker,
        Job.attempts == run.attempt,
    )


class _Heartbeat:
    """While a job runs, a thread writes its heartbeat and its process's memory every
    DSPO_JOB_HEARTBEAT_SECONDS."""

    def __init__(self, runtime: Runtime, run: _Run) -> None:
        self.runtime, self.run = runtime, run
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{run.ctx.job_id}", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        while not self.stopped.wait(self.runtime.settings.job_heartbeat_seconds):
            try:
                with session_scope(self.runtime.sessions) as session:
                    owned = session.execute(
                        update(Job)
                        .where(_owned(self.run))
                        .values(heartbeat_at=utcnow(), worker_rss_bytes=rss_bytes())
                    ).rowcount  # type: ignore[attr-defined]
                if not owned:
                    log.warning(
                        "job %s was taken over by another worker while this one ran it", self.run.ctx.job_id
                    )
                    return
            except SQLAlchemyError as exc:
                log.warning(
                    "job %s: heartbeat not written (%s); the next one tries again", self.run.ctx.job_id, exc
                )


def run_job(runtime: Runtime, job_id: int) -> str:
    """Run one job to the end and record its outcome; returns the job's state (that of another worker's
    run, or of a finished job, when this delivery is a duplicate)."""
    run = _claim(runtime, job_id)
    if isinstance(run, str):
        log.info("job %s not run by this delivery: it is %s", job_id, run)
        return run
    ctx = run.ctx
    log.info("job %s (%s) started (attempt %d): %s", job_id, ctx.kind, run.attempt, ctx.payload)
    with _Heartbeat(runtime, run):
        try:
            result = handlers()[ctx.kind](ctx)
        except Exception as exc:
            log.error("job %s (%s) failed: %s\n%s", job_id, ctx.kind, exc, traceback.format_exc())
            _finish(runtime, run, "failed", error=f"{type(exc).__name__}: {exc}")
            return "failed"
    for follow_up in _finish(runtime, run, "succeeded", result=result or {}, follow_ups=ctx.follow_ups):
        dispatch(runtime, follow_up.id, follow_up.queue)
    log.info("job %s (%s) succeeded", job_id, ctx.kind)
    return "succeeded"


def _finish(
    runtime: Runtime,
    run: _Run,
    state: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    follow_ups: Iterable[JobSpec] = (),
) -> list[Job]:
    """Record the outcome and create the follow-up jobs in the same transaction, so that a chain is
    never half-written; returns the follow-up jobs to dispatch. An attempt that lost its row (taken for
    dead and taken over) records nothing: the attempt that owns the row does."""
    with session_scope(runtime.sessions) as session:
        job = session.scalars(select(Job).where(_owned(run)).with_for_update()).first()
        if job is None:
            log.warning(
                "job %s: this attempt's outcome (%s) is dropped; another attempt owns it",
                run.ctx.job_id,
                state,
            )
            return []
        job.state, job.finished_at, job.error, job.result = state, utcnow(), error, result
        job.heartbeat_at = utcnow()
        if state == "succeeded":
            job.progress = 1.0
        return create(session, follow_ups)
