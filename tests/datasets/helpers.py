"""A project with sources, candidates, instances and tasks made by the real jobs, and votes on it."""

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from dspo import jobs
from dspo.cli import ensure_user
from dspo.db import session_scope
from dspo.ingest import add_source
from dspo.models import Candidate, Job, Project, Task, User, Vote
from dspo.runtime import Runtime
from tests.helpers import png_bytes


def wait_jobs(runtime: Runtime, project_id: int, timeout: float = 120) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        with runtime.sessions() as session:
            rows = list(session.scalars(select(Job).where(Job.project_id == project_id).order_by(Job.id)))
        if rows and all(j.state in ("succeeded", "failed") for j in rows):
            return rows
        assert time.monotonic() < deadline, [(j.kind, j.state) for j in rows]
        time.sleep(0.05)


def make_project(runtime: Runtime, n_sources: int = 3, name: str = "", **fields: object) -> int:
    """A project whose sources went through ingest → candidates → instances → tasks."""
    # felzenszwalb: these tests count on its three instances per 24x16 source (regions, the default, makes
    # other counts; its own tests are in tests/unit/test_segmenters.py).
    defaults: dict[str, object] = {
        "n_candidates": 3,
        "overlap": 3,
        "min_area_fraction": 0.05,
        "segmenter": "felzenszwalb",
    }
    with session_scope(runtime.sessions) as session:
        project = Project(name=name or uuid.uuid4().hex[:8], **{**defaults, **fields})
        session.add(project)
        session.flush()
        sources = [
            add_source(
                session,
                runtime.blobs,
                project,
                png_bytes(24, 16, seed),
                filename=f"{seed}.png",
                kind="lq",
                prompt=f"photo {seed}",
                max_pixels=10**7,
            )[0]
            for seed in range(n_sources)
        ]
        session.flush()
        project_id, source_ids = project.id, [s.id for s in sources]
    jobs.submit(runtime, [jobs.JobSpec("ingest", {"source_id": s}, project_id) for s in source_ids])
    assert all(j.state == "succeeded" for j in wait_jobs(runtime, project_id))
    return project_id


def users(runtime: Runtime, names: Sequence[str]) -> list[int]:
    for name in names:
        ensure_user(runtime, name, "annotator", "password-123")
    with runtime.sessions() as session:
        return [session.scalars(select(User.id).where(User.username == n)).one() for n in names]


@dataclass
class TaskInfo:
    id: int
    source_id: int
    instance_id: int | None
    candidates: list[int]  # candidate ids by position


def tasks(runtime: Runtime, project_id: int) -> list[TaskInfo]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Task.id, Task.source_id, Task.instance_id).where(Task.project_id == project_id)
        ).all()
        found = []
        for task_id, source_id, instance_id in sorted(rows):
            ids = session.scalars(
                select(Candidate.id).where(Candidate.source_id == source_id).order_by(Candidate.position)
            ).all()
            found.append(TaskInfo(task_id, source_id, instance_id, list(ids)))
        return found


def vote(
    runtime: Runtime,
    task: TaskInfo,
    user_id: int,
    outcome: str = "pick",
    best: int | None = 0,
    worst: int | None = 1,
    content: str = "",
    defect: str = "",
) -> None:
    """Store an answer; best and worst are candidate positions."""
    pick = outcome == "pick"
    with session_scope(runtime.sessions) as session:
        session.add(
            Vote(
                task_id=task.id,
                user_id=user_id,
                outcome=outcome,
                best_candidate_id=task.candidates[best] if pick and best is not None else None,
                worst_candidate_id=task.candidates[worst] if pick and worst is not None else None,
                content_text=content,
                defect_text=defect,
                shown_order=task.candidates,
                client_submission_id=uuid.uuid4().hex,
            )
        )


def vote_all(runtime: Runtime, project_id: int, user_ids: Sequence[int]) -> list[TaskInfo]:
    """Every user picks candidate 0 as best and 1 as worst on every task: all tasks give a pair."""
    found = tasks(runtime, project_id)
    for task in found:
        for user_id in user_ids:
            vote(runtime, task, user_id)
    return found
