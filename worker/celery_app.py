"""The Celery worker: `dspo worker` runs it. Each Celery task runs one job row through dspo.jobs."""

import logging
from functools import cache

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

from dspo import jobs, logs
from dspo.retrain import retrain_tick
from dspo.runtime import Runtime
from dspo.settings import get_settings

log = logging.getLogger(__name__)


def make_celery() -> Celery:
    settings = get_settings()
    if not settings.broker_url:
        raise RuntimeError("DSPO_BROKER_URL is empty: set it to redis://host:6379/0 to run a worker")
    app = Celery("dspo", broker=settings.broker_url)
    app.conf.update(
        broker_transport_options=jobs.transport_options(
            settings.redis_key_prefix, settings.broker_visibility_timeout_seconds
        ),
        # A job whose pool process dies is delivered again at once, and its delivery takes the job over
        # (dspo.jobs._claim); one whose whole worker died is re-queued by the sweeper. The database
        # drops any other redelivery, so that nothing runs twice at once.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=jobs.CELERY_TASK_NAME)(run_job)
    # Scheduled retraining: `dspo beat` sends this tick; each project's K and interval decide the rest.
    app.task(name=RETRAIN_TASK_NAME)(run_retrain_tick)
    app.task(name=RELAY_TASK_NAME)(run_relay)
    app.task(name=SWEEP_TASK_NAME)(run_sweep)
    # A tick that waited longer than its period in the queue (busy workers) is dropped: the next one
    # does the same work.
    app.conf.beat_schedule = {
        "retrain": {
            "task": RETRAIN_TASK_NAME,
            "schedule": settings.retrain_tick_seconds,
        },
        "relay-jobs": {
            "task": RELAY_TASK_NAME,
            "schedule": settings.job_relay_seconds,
            "options": {"expires": settings.job_relay_seconds},
        },
        "sweep-jobs": {
            "task": SWEEP_TASK_NAME,
            "schedule": settings.job_sweep_seconds,
            "options": {"expires": settings.job_sweep_seconds},
        },
    }
    return app


@cache
def runtime() -> Runtime:
    return Runtime.from_settings()


@worker_process_init.connect
def _fresh_runtime_per_process(**_: object) -> None:
    # Database connections must not be shared across the prefork boundary.
    runtime.cache_clear()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: object) -> None:
    # Celery sets up its own handlers; with DSPO_LOG_FORMAT=json they write JSON like the server's.
    if get_settings().log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(logs.JsonFormatter())


def run_job(job_id: int) -> str:
    return jobs.run_job(runtime(), job_id)


RETRAIN_TASK_NAME = "dspo.retrain_tick"


def run_retrain_tick() -> dict[str, list[int]]:
    return retrain_tick(runtime())


RELAY_TASK_NAME = "dspo.relay_jobs"
SWEEP_TASK_NAME = "dspo.sweep_jobs"


def run_relay() -> list[int]:
    return jobs.relay(runtime())


def run_sweep() -> dict[str, list[int]]:
    return jobs.sweep(runtime())
