"""The Celery worker: `dspo worker` runs it. Each Celery task runs one job row through dspo.jobs."""

import logging
from functools import cache

from celery import Celery
from celery.signals import worker_process_init

from dspo import jobs
from dspo.runtime import Runtime
from dspo.settings import get_settings

log = logging.getLogger(__name__)


def make_celery() -> Celery:
    settings = get_settings()
    if not settings.broker_url:
        raise RuntimeError("DSPO_BROKER_URL is empty: set it to redis://host:6379/0 to run a worker")
    app = Celery("dspo", broker=settings.broker_url)
    app.conf.update(
        broker_transport_options=jobs.transport_options(settings.redis_key_prefix),
        task_acks_late=True,  # a job whose worker dies is delivered again (handlers are idempotent)
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=jobs.CELERY_TASK_NAME)(run_job)
    return app


@cache
def runtime() -> Runtime:
    return Runtime.from_settings()


@worker_process_init.connect
def _fresh_runtime_per_process(**_: object) -> None:
    # Database connections must not be shared across the prefork boundary.
    runtime.cache_clear()


def run_job(job_id: int) -> str:
    return jobs.run_job(runtime(), job_id)
