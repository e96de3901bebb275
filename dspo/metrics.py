"""Prometheus metrics (served at /metrics by annotation_server).

Two kinds:
- counted in the server processes: request latency by route template, votes accepted, tasks leased.
  With several server processes (`dspo serve --workers N`), each writes its values to files in
  PROMETHEUS_MULTIPROC_DIR (set by `dspo serve`, or by the operator: an empty folder per start) and a
  scrape adds them up; with one process they stay in memory.
- read from the database at each scrape, so that they are the same whichever server process answers
  and include what the workers (other processes, other machines) did: jobs by kind and state (queued
  = the queue's depth), durations of finished jobs by kind and outcome, and the age of each running
  job's heartbeat by worker.
"""

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import case, func, select

from dspo.db import utcnow
from dspo.models import Job
from dspo.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REQUEST_SECONDS = Histogram(
    "dspo_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
VOTES_ACCEPTED = Counter(
    "dspo_votes_accepted_total",
    "Answers recorded (a replayed submission counts once), by outcome",
    ["outcome"],
)
TASKS_LEASED = Counter("dspo_tasks_leased_total", "Task slots leased to annotators by `next`")

JOB_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class JobsCollector(Collector):
    """The jobs table, read at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        with self.runtime.read_sessions() as session:
            by_state = session.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            ).all()
            seconds = func.extract("epoch", Job.finished_at - Job.started_at)
            if self.runtime.engine.dialect.name == "sqlite":
                seconds = (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
            finished = Job.state.in_(("succeeded", "failed")) & Job.started_at.is_not(None)
            buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in JOB_BUCKETS]
            durations = session.execute(
                select(Job.kind, Job.state, func.count(), func.sum(seconds), *buckets)
                .where(finished)
                .group_by(Job.kind, Job.state)
            ).all()
            beats = session.execute(
                select(Job.worker, func.min(Job.heartbeat_at))
                .where(Job.state == "running", Job.worker.is_not(None))
                .group_by(Job.worker)
            ).all()

        jobs = GaugeMetricFamily(
            "dspo_jobs", "Jobs by kind and state (state=queued: the queue's depth)", labels=["kind", "state"]
        )
        for kind, state, count in by_state:
            jobs.add_metric([kind, state], count)
        yield jobs

        histogram = HistogramMetricFamily(
            "dspo_job_duration_seconds",
            "Run time of finished jobs (their last attempt), by kind and outcome",
            labels=["kind", "state"],
        )
        for kind, state, count, total, *cumulative in durations:
            points = [(str(bound), int(n or 0)) for bound, n in zip(JOB_BUCKETS, cumulative, strict=True)]
            histogram.add_metric([kind, state], [*points, ("+Inf", int(count))], float(total or 0.0))
        yield histogram

        now = utcnow()
        heartbeat = GaugeMetricFamily(
            "dspo_worker_heartbeat_age_seconds",
            "Seconds since a worker's oldest running job's heartbeat (dead past DSPO_JOB_STALE_SECONDS)",
            labels=["worker"],
        )
        for worker, oldest in beats:
            heartbeat.add_metric([worker], (now - oldest).total_seconds() if oldest else float("inf"))
        yield heartbeat


def exposition(runtime: Runtime) -> bytes:
    """The text of a scrape: this process's (or all server processes') counters, then the jobs."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = REGISTRY
    from_database = CollectorRegistry(auto_describe=False)
    from_database.register(JobsCollector(runtime))
    return generate_latest(counted) + generate_latest(from_database)
