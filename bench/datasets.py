"""Dataset benchmark: aggregation, native writing and each export, on bulk-loaded votes.

For each size it loads a synthetic project straight into the tables of a fresh database (PostgreSQL:
a `dspo_bench_<random>` database, dropped at the end; or SQLite: a file in a temp dir): sources with
4 distinct 8x8 → 32x32 candidates, 9 instance masks each plus an image-level task, k = 3 votes per
task from 30 annotators (70% agree with a hidden truth, 5% ties, 3% "all bad"). Then it times
aggregation (SQL GROUP BY), the native writer (images copied from the blob store, checked against
their sha256), verification, and each export, and prints records/s. With --speedup it builds two
datasets of the 100k project with one worker process, then with two, and prints the ratio.

    python -m bench.datasets                          # PostgreSQL, 100k and 1M votes, speed-up
    python -m bench.datasets --backend sqlite --sizes 100000
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.api import postgres_database
from dspo.aggregate import aggregate, newest_vote_id
from dspo.blobs import BlobStore
from dspo.dataset_format import verify_dataset
from dspo.datasets import BuildSettings, build, request_dataset, write_native
from dspo.exports import EXPORTERS
from dspo.images import mask_to_png
from dspo.migrate import upgrade
from dspo.runtime import Runtime
from dspo.settings import Settings

N_CANDIDATES, INSTANCES, K, ANNOTATORS, LQ, SCALE = 4, 9, 3, 30, 8, 4


@contextmanager
def database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        url = f"sqlite:///{folder / 'bench.db'}"
        upgrade(url)
        yield url
        return
    with postgres_database() as url:
        yield url


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _put(blobs: BlobStore, data: bytes) -> str:
    # Bulk load: the blob store's layout without its per-file fsync, which would dominate the setup.
    sha = hashlib.sha256(data).hexdigest()
    path = blobs.path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha


def make_blobs(blobs: BlobStore, n_sources: int, rng: np.random.Generator) -> dict[str, list]:
    """Distinct images per source, so that the writer copies as many files as a real project has."""
    sr = LQ * SCALE
    lq, candidates, masks = [], [], []
    for _ in range(n_sources):
        lq.append(_put(blobs, _png(rng.integers(0, 256, (LQ, LQ, 3), dtype=np.uint8))))
        candidates.append(
            [
                _put(blobs, _png(rng.integers(0, 256, (sr, sr, 3), dtype=np.uint8)))
                for _ in range(N_CANDIDATES)
            ]
        )
        masks.append([_put(blobs, mask_to_png(rng.random((sr, sr)) < 0.3)) for _ in range(INSTANCES)])
    return {"lq": lq, "candidates": candidates, "masks": masks}


def tables(n_votes: int, project_id: int, rng: np.random.Generator, blobs: dict[str, list]) -> dict:
    """Rows for every table, as column lists; ids are given explicitly so they can be bulk-loaded."""
    tasks_per_source = INSTANCES + 1
    n_sources = len(blobs["lq"])
    n_tasks = n_sources * tasks_per_source
    now = datetime.now(UTC).replace(tzinfo=None)
    sr = LQ * SCALE
    rows: dict[str, list[tuple]] = {"users": [], "sources": [], "candidates": [], "instances": []}
    rows["users"] = [
        (u, f"bench{project_id}-{u}", "x", "annotator", True, now) for u in range(1, ANNOTATORS + 1)
    ]
    for s in range(n_sources):
        sid = s + 1
        rows["sources"].append(
            (sid, project_id, f"{s:064x}", "", "lq", blobs["lq"][s], None, LQ, LQ, "", "ready", now)
        )
        for c in range(N_CANDIDATES):
            rows["candidates"].append(
                (sid * N_CANDIDATES + c, sid, c, blobs["candidates"][s][c], sr, sr, "bench", "bench", 0)
            )
        for i in range(INSTANCES):
            rows["instances"].append(
                (sid * INSTANCES + i, sid, i, blobs["masks"][s][i], 0, 0, sr, sr, 100, 1 / INSTANCES, False)
            )
    task_ids = np.arange(1, n_tasks + 1)
    task_source = (task_ids - 1) // tasks_per_source + 1
    task_pos = (task_ids - 1) % tasks_per_source
    instance_ids = np.where(task_pos < INSTANCES, task_source * INSTANCES + task_pos, -1)
    rows["tasks"] = [
        (
            int(t),
            project_id,
            int(s),
            None if i < 0 else int(i),
            "image" if i < 0 else "instance",
            K,
            K,
            K,
            "complete",
            now,
        )
        for t, s, i in zip(task_ids, task_source, instance_ids, strict=True)
    ]
    # k distinct annotators per task; 70% of picks agree with a hidden truth.
    n = n_tasks * K
    vote_task = np.repeat(task_ids, K)[:n_votes]
    offsets = rng.integers(0, ANNOTATORS, n_tasks)
    vote_user = ((np.repeat(offsets, K) + np.tile(np.arange(K), n_tasks)) % ANNOTATORS + 1)[:n_votes]
    truth_best = np.repeat(rng.integers(0, N_CANDIDATES, n_tasks), K)[:n_votes]
    truth_worst = (
        truth_best + 1 + np.repeat(rng.integers(0, N_CANDIDATES - 1, n_tasks), K)[:n_votes]
    ) % N_CANDIDATES
    agree = rng.random(n_votes) < 0.7
    best = np.where(agree, truth_best, rng.integers(0, N_CANDIDATES, n_votes))
    worst = np.where(
        agree, truth_worst, (best + 1 + rng.integers(0, N_CANDIDATES - 1, n_votes)) % N_CANDIDATES
    )
    roll = rng.random(n_votes)
    outcome = np.where(roll < 0.05, "tie", np.where(roll < 0.08, "all_bad", "pick"))
    source = (vote_task - 1) // tasks_per_source + 1
    rows["votes"] = [
        (
            v + 1,
            int(vote_task[v]),
            int(vote_user[v]),
            str(outcome[v]),
            int(source[v] * N_CANDIDATES + best[v]) if outcome[v] == "pick" else None,
            int(source[v] * N_CANDIDATES + worst[v]) if outcome[v] == "pick" else None,
            "brick wall" if v % 7 == 0 else "",
            "invented letters" if v % 11 == 0 else "",
            "[]",
            1000,
            f"b{v}",
            now,
        )
        for v in range(min(n, n_votes))
    ]
    return rows


COLUMNS = {
    "users": "id, username, password_hash, role, is_active, created_at",
    "sources": "id, project_id, upload_sha256, filename, kind, lq_sha256, hq_sha256, width, height, prompt, "
    "state, created_at",
    "candidates": "id, source_id, position, sha256, width, height, generator, model, seed",
    "instances": "id, source_id, position, mask_sha256, x0, y0, x1, y1, area, weight, is_rest",
    "tasks": "id, project_id, source_id, instance_id, kind, required_votes, vote_count, slots_taken, state, "
    "created_at",
    "votes": "id, task_id, user_id, outcome, best_candidate_id, worst_candidate_id, content_text, "
    "defect_text, shown_order, lead_time_ms, client_submission_id, created_at",
}


def bulk_load(url: str, project_id: int, rows: dict[str, list[tuple]]) -> None:
    """COPY on PostgreSQL, executemany on SQLite; the project row goes in through SQL first."""
    project = (
        "INSERT INTO projects (id, name, instructions, n_candidates, overlap, scale, generator, "
        "generator_settings, segmenter, segmenter_settings, min_area_fraction, image_level_tasks, "
        "require_content, require_defect, retrain_interval_minutes, train_settings, created_at) VALUES "
        f"({project_id}, 'bench', '', {N_CANDIDATES}, {K}, {SCALE}, 'classical', '{{}}', 'slic', '{{}}', "
        "0.005, true, false, false, 60, '{}', CURRENT_TIMESTAMP)"
    )
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute(project)
        for table, columns in COLUMNS.items():
            extra = ", settings" if table == "candidates" else ""
            names = columns + extra
            marks = ", ".join("?" * len(names.split(", ")))
            data = [(*r, "{}") for r in rows[table]] if extra else rows[table]
            conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", data)
        conn.commit()
        conn.close()
        return
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(project)
        for table, columns in COLUMNS.items():
            extra = ", settings" if table == "candidates" else ""
            with conn.cursor().copy(f"COPY {table} ({columns}{extra}) FROM STDIN") as copy:
                for row in rows[table]:
                    copy.write_row((*row, "{}") if extra else row)
        for table in ("users", "sources", "candidates", "instances", "tasks", "votes"):
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        conn.execute("ANALYZE")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _build_one(args: tuple[str, str, int, int]) -> float:
    url, storage, dataset_id, job_id = args
    runtime = Runtime.from_settings(Settings(database_url=url, storage_root=Path(storage), _env_file=None))
    _, seconds = timed(lambda: build(runtime, dataset_id, job_id, lambda fraction, message: None))
    runtime.close()
    return seconds


def speedup(url: str, storage: Path, project_id: int) -> tuple[float, float]:
    """Wall time to build two datasets (different seeds) with one worker process, then with two."""
    runtime = Runtime.from_settings(Settings(database_url=url, storage_root=storage, _env_file=None))
    walls = []
    for workers, seeds in ((1, (101, 102)), (2, (103, 104))):
        jobs = [
            (
                url,
                str(storage),
                *request_dataset(runtime, project_id, BuildSettings(seed=seed), dispatch=False)[:2],
            )
            for seed in seeds
        ]
        with ProcessPoolExecutor(workers) as pool:
            _, wall = timed(lambda jobs=jobs: list(pool.map(_build_one, jobs)))
        walls.append(wall)
    runtime.close()
    return walls[0], walls[1]


def fake_blobs(n_sources: int) -> dict[str, list]:
    """Names only, no files: enough for aggregation, which never reads an image."""

    def sha(*key: int) -> str:
        return hashlib.sha256(repr(key).encode()).hexdigest()

    return {
        "lq": [sha(s) for s in range(n_sources)],
        "candidates": [[sha(s, 1, c) for c in range(N_CANDIDATES)] for s in range(n_sources)],
        "masks": [[sha(s, 2, i) for i in range(INSTANCES)] for s in range(n_sources)],
    }


def run(backend: str, n_votes: int, with_speedup: bool, aggregate_only: bool) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="dspo-bench-"))
    lines: list[str] = []

    def line(step: str, seconds: float, notes: str = "") -> str:
        text = f"| {backend} | {n_votes:,} | {step} | {seconds:.1f} s | {notes} |"
        print(text, flush=True)  # as it comes: a 1M run takes long
        return text

    try:
        with database(backend, folder) as url:
            rng = np.random.default_rng(0)
            storage = folder / "blobs"
            n_sources = -(-n_votes // (K * (INSTANCES + 1)))
            if aggregate_only:
                blobs, t_blobs = fake_blobs(n_sources), 0.0
            else:
                blobs, t_blobs = timed(lambda: make_blobs(BlobStore(storage), n_sources, rng))
            rows, t_rows = timed(lambda: tables(n_votes, 1, rng, blobs))
            _, t_load = timed(lambda: bulk_load(url, 1, rows))
            print(f"  {n_votes} votes: blobs {t_blobs:.0f} s, rows {t_rows:.0f} s, bulk load {t_load:.0f} s")
            runtime = Runtime.from_settings(Settings(database_url=url, storage_root=storage, _env_file=None))
            settings = BuildSettings()
            with runtime.sessions() as session:
                newest = newest_vote_id(session, 1)
                result, t_agg = timed(lambda: aggregate(session, 1, newest, settings.aggregation))
            records = len(result.pairs)
            drops = ", ".join(f"{k} {v}" for k, v in sorted(result.drops.items()))
            lines.append(
                line(f"aggregate | {n_votes / t_agg:,.0f} votes/s", t_agg, f"{records:,} records; {drops}")
            )
            if aggregate_only:
                runtime.close()
                return lines
            native = folder / "out" / "native"
            writer, t_write = timed(
                lambda: write_native(runtime.blobs, result.pairs, settings, SCALE, native)
            )
            _, t_finish = timed(lambda: writer.finish({"dataset_id": "bench", "version": 1}))
            t_write += t_finish
            lines.append(line(f"native write | {records / t_write:,.0f} records/s", t_write))
            _, t_verify = timed(lambda: verify_dataset(native))
            lines.append(line(f"verify | {records / t_verify:,.0f} records/s", t_verify))
            for name, export in EXPORTERS.items():
                _, t_export = timed(lambda export=export, name=name: export(native, folder / "out" / name))
                size = sum(p.stat().st_size for p in (folder / "out" / name).rglob("*") if p.is_file())
                speed = f"export {name} | {records / t_export:,.0f} records/s"
                lines.append(line(speed, t_export, f"{size / 2**20:,.0f} MiB"))
            shutil.rmtree(folder / "out")
            runtime.close()
            if with_speedup:
                one, two = speedup(url, storage, 1)
                walls = f"1 process {one:.1f} s, 2 processes {two:.1f} s"
                lines.append(line(f"2 full builds | speed-up {one / two:.2f}x", two, walls))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated vote counts")
    parser.add_argument("--speedup-size", type=int, default=100000, help="size for the 1 → 2 process ratio")
    parser.add_argument(
        "--aggregate-only-from", type=int, default=None, help="from this size on, time aggregation only"
    )
    args = parser.parse_args()
    header = ["| backend | votes | step | throughput | wall | notes |", "|---|---|---|---|---|---|"]
    lines = []
    for size in (int(s) for s in args.sizes.split(",")):
        only = args.aggregate_only_from is not None and size >= args.aggregate_only_from
        lines += run(args.backend, size, with_speedup=size == args.speedup_size, aggregate_only=only)
    print("\n".join(header + lines))


if __name__ == "__main__":
    main()
