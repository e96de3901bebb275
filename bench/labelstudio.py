"""The Label Studio bridge against a real Label Studio (installed like the tests' fixture does):

- how long from an answer posted to Label Studio's API until its vote is here (the webhook), and, as the
  baseline in the same run, the same answer POST with the webhook switched off;
- how long `sync` takes for a Label Studio project with ~10,000 answers: the first sync (every answer
  applied), a second one (nothing changed), and Label Studio's export alone (download and parse) as the
  part that is Label Studio's.

Prints a markdown table (docs/benchmarks.md, "Label Studio bridge").

    python -m bench.labelstudio                       # SQLite, 10,000 answers, 30 latency samples
    python -m bench.labelstudio --backend postgres --answers 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select

from annotation_server.main import create_app
from bench.api import postgres_database, sqlite_database
from dspo.images import encode_png, mask_to_png
from dspo.labelstudio import bridge
from dspo.labelstudio.config import labeling_config
from dspo.models import (
    Candidate,
    Instance,
    LabelStudioAnswer,
    LabelStudioLink,
    Project,
    Source,
    Task,
)
from dspo.runtime import Runtime
from dspo.settings import Settings
from tests.helpers import serving
from tests.labelstudio.server import running_labelstudio

ANNOTATORS = ("bench.one@example.com", "bench.two@example.com", "bench.three@example.com")
N_CANDIDATES, SCALE, LQ = 3, 4, (24, 16)
IMPORT_BATCH = 250


def _png(rng: np.random.Generator, width: int, height: int) -> bytes:
    from PIL import Image

    return encode_png(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))


def make_project(
    runtime: Runtime, name: str, n_tasks: int, rng: np.random.Generator
) -> tuple[int, list[int]]:
    """A project of one source with N candidates and `n_tasks` instance tasks (rows written directly:
    the bridge reads tasks and candidates, not how they were made); its task ids."""
    blobs = runtime.blobs
    with runtime.sessions() as session:
        project = Project(name=name, n_candidates=N_CANDIDATES, overlap=3, scale=SCALE, instructions="Bench.")
        session.add(project)
        session.flush()
        source = Source(
            project_id=project.id,
            upload_sha256=name.ljust(64, "0")[:64],
            kind="lq",
            lq_sha256=blobs.put(_png(rng, *LQ)),
            width=LQ[0],
            height=LQ[1],
            state="ready",
        )
        session.add(source)
        session.flush()
        sr = (LQ[0] * SCALE, LQ[1] * SCALE)
        for position in range(N_CANDIDATES):
            sha = blobs.put(_png(rng, *sr))
            session.add(
                Candidate(
                    source_id=source.id,
                    position=position,
                    sha256=sha,
                    width=sr[0],
                    height=sr[1],
                    generator="bench",
                    model="bench",
                    settings={},
                    seed=0,
                )
            )
        mask = blobs.put(mask_to_png(np.ones((sr[1], sr[0]), dtype=bool)))
        instance_rows = [
            {
                "source_id": source.id,
                "position": i,
                "mask_sha256": mask,
                "x0": 0,
                "y0": 0,
                "x1": sr[0],
                "y1": sr[1],
                "area": sr[0] * sr[1],
                "weight": 1 / n_tasks,
                "is_rest": False,
            }
            for i in range(n_tasks)
        ]
        instance_ids = session.scalars(insert(Instance).returning(Instance.id), instance_rows).all()
        task_rows = [
            {
                "project_id": project.id,
                "source_id": source.id,
                "instance_id": i,
                "kind": "instance",
                "required_votes": 3,
            }
            for i in instance_ids
        ]
        task_ids = session.scalars(insert(Task).returning(Task.id), task_rows).all()
        session.commit()
        return project.id, sorted(task_ids)


def pick(best: str, worst: str) -> list[dict]:
    return [
        {"from_name": name, "to_name": "lq", "type": "choices", "value": {"choices": [value]}}
        for name, value in (("best", best), ("worst", worst))
    ]


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def latency(runtime: Runtime, ls, annotators: dict, samples: int, rng: np.random.Generator) -> list[tuple]:
    """Answers posted to Label Studio's API, each waited for here; then as many with the webhook off."""
    from label_studio_sdk import LabelStudio

    project_id, _task_ids = make_project(runtime, "latency", 2 * samples, rng)
    with serving(create_app(runtime)) as port:
        pushed = bridge.push(runtime, project_id, ls.url, ls.token, public_url=f"http://127.0.0.1:{port}")
        admin = LabelStudio(base_url=ls.url, api_key=ls.token)
        ls_tasks = [t.id for t in admin.tasks.list(project=pushed.ls_project_id, fields="task_only")]
        clients = [LabelStudio(base_url=ls.url, api_key=annotators[e][1]) for e in ANNOTATORS]
        to_vote, posts = [], []
        for n in range(samples):
            started = time.perf_counter()
            made = clients[n % 3].annotations.create(id=ls_tasks[n], result=pick("A", "B"))
            posted = time.perf_counter()
            while True:
                with runtime.read_sessions() as session:
                    found = session.scalar(
                        select(LabelStudioAnswer.vote_id).where(LabelStudioAnswer.annotation_id == made.id)
                    )
                if found:
                    break
                time.sleep(0.002)
            to_vote.append(time.perf_counter() - started)
            posts.append(posted - started)
        admin.webhooks.update(pushed.webhook_id, is_active=False)
        without = []
        for n in range(samples, 2 * samples):
            started = time.perf_counter()
            clients[n % 3].annotations.create(id=ls_tasks[n], result=pick("A", "B"))
            without.append(time.perf_counter() - started)
    return [
        ("answer in Label Studio → vote here (webhook)", samples, *quantiles(to_vote)),
        ("… of which the answer POST to Label Studio", samples, *quantiles(posts)),
        ("answer POST with the webhook off (baseline)", samples, *quantiles(without)),
    ]


def sync_rows(runtime: Runtime, ls, annotators: dict, answers: int, rng: np.random.Generator) -> list[tuple]:
    """A Label Studio project whose tasks come with `answers` annotations (imported, which is much
    faster than posting them one by one), linked to a project here; then sync it twice."""
    from label_studio_sdk import LabelStudio

    n_tasks = -(-answers // 3)
    project_id, task_ids = make_project(runtime, "sync", n_tasks, rng)
    admin = LabelStudio(base_url=ls.url, api_key=ls.token)
    ls_project = admin.projects.create(title="bench sync", label_config=labeling_config(N_CANDIDATES))
    user_ids = [annotators[e][0] for e in ANNOTATORS]
    with runtime.read_sessions() as session:
        candidates = sorted(
            session.scalars(
                select(Candidate.id)
                .join(Source, Source.id == Candidate.source_id)
                .where(Source.project_id == project_id)
            )
        )
    payload = []
    letters = "ABC"
    for i, task_id in enumerate(task_ids):
        data = bridge.task_data(
            task_id, candidates, public_url="http://127.0.0.1:1", secret_key="bench", expires=2**40
        )
        given = min(3, answers - 3 * i)
        payload.append(
            {
                "data": data,
                "annotations": [
                    {
                        "result": pick(letters[(i + u) % 3], letters[(i + u + 1) % 3]),
                        "completed_by": user_ids[u],
                    }
                    for u in range(given)
                ],
            }
        )
    started = time.perf_counter()
    for start in range(0, len(payload), IMPORT_BATCH):
        admin.projects.import_tasks(ls_project.id, request=payload[start : start + IMPORT_BATCH])
    imported = time.perf_counter() - started
    with runtime.sessions() as session:
        session.add(
            LabelStudioLink(project_id=project_id, url=ls.url, ls_project_id=ls_project.id, user_emails={})
        )
        session.commit()

    started = time.perf_counter()
    exported = json.loads(b"".join(admin.projects.exports.download_sync(ls_project.id, export_type="JSON")))
    export_seconds = time.perf_counter() - started
    total = sum(len(t.get("annotations", [])) for t in exported)
    first = bridge.sync(runtime, project_id, ls.token)
    assert first.applied.accepted == total, (first, _reasons(runtime))
    second = bridge.sync(runtime, project_id, ls.token)
    assert second.unchanged == total, second
    return [
        (f"import {n_tasks:,} tasks with {total:,} answers into Label Studio (setup)", total, imported),
        ("Label Studio's JSON export alone (download + parse)", total, export_seconds),
        ("`sync`, first (every answer becomes a vote)", total, first.seconds),
        ("`sync` again (nothing changed)", total, second.seconds),
    ]


def _reasons(runtime: Runtime) -> list[str]:
    with runtime.read_sessions() as session:
        return sorted(
            set(session.scalars(select(LabelStudioAnswer.reason).where(LabelStudioAnswer.reason != "")))
        )


@contextmanager
def database(backend: str) -> Iterator[str]:
    with postgres_database() if backend == "postgres" else sqlite_database() as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--answers", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=30, help="answers timed for the webhook latency")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="dspo-bench-ls-") as folder, database(args.backend) as url:
        settings = Settings(
            database_url=url,
            storage_root=Path(folder) / "blobs",
            secret_key="bench-secret",
            labelstudio_webhook_secret="bench-webhook-secret",
            _env_file=None,  # type: ignore[call-arg]
        )
        runtime = Runtime.from_settings(settings)
        (Path(folder) / "ls").mkdir()
        with running_labelstudio(Path(folder) / "ls") as ls:
            annotators = ls.make_users(list(ANNOTATORS))
            latencies = latency(runtime, ls, annotators, args.samples, rng)
            syncs = sync_rows(runtime, ls, annotators, args.answers, rng)
        runtime.close()
    print(f"\nLabel Studio bridge, {args.backend}\n")
    print("| measurement | n | median s | p90 s |")
    print("|---|---:|---:|---:|")
    for name, n, median, p90 in latencies:
        print(f"| {name} | {n} | {median:.3f} | {p90:.3f} |")
    print("\n| measurement | answers | seconds | answers/s |")
    print("|---|---:|---:|---:|")
    for name, n, seconds in syncs:
        print(f"| {name} | {n:,} | {seconds:.1f} | {n / seconds:,.0f} |")


if __name__ == "__main__":
    main()
