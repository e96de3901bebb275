"""Annotation API benchmark: the "next task, then vote" loop over real HTTP.

It starts ``dspo serve`` itself (a subprocess on a free 127.0.0.1 port, N uvicorn workers), on SQLite
(a file in a temp dir) and on PostgreSQL (a fresh ``dspo_bench_<random>`` database, dropped at the end),
with 10k and 1M tasks bulk-loaded straight into the tables, and drives it with C annotators, each its
own user and token, from threads of this process. The load generator shares the machine with the
server on purpose: that is the setting the targets are stated for.

    python -m bench.api                                  # the default matrix (a few minutes)
    python -m bench.api --backends postgres --sizes 1000000 --concurrency 8 --workers 1,2 --duration 20

Latencies are measured by the client, so they include its own (GIL-bound) overhead.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dspo.db import make_engine, make_session_factory
from dspo.migrate import upgrade
from dspo.models import Base, User
from dspo.security import hash_password

POSTGRES_ADMIN_URL = os.environ.get(
    "DSPO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DSPO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
PASSWORD = "bench-password"

# Shape of the synthetic project: SPEC §1 step 4, one image-level task per source plus one task per
# instance. Nine instances per source means 1M tasks need only 100k sources, 400k candidates and
# 900k instances (2.4M rows), instead of 1M sources and 4M candidates with image-level tasks only.
N_CANDIDATES = 4
INSTANCES_PER_SOURCE = 9
LQ_SIZE = (128, 96)
SCALE = 4


# --------------------------------------------------------------------------------------------------
# Databases


@contextmanager
def postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """A fresh, migrated database, dropped on the way out (even when the benchmark fails)."""
    admin = sa.create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    name = f"dspo_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="dspo-bench-") as folder:
        url = f"sqlite:///{folder}/bench.db"
        upgrade(url)
        yield url


@contextmanager
def database(backend: str) -> Iterator[str]:
    manager = postgres_database() if backend == "postgres" else sqlite_database()
    with manager as url:
        yield url


# --------------------------------------------------------------------------------------------------
# Bulk load


@dataclass
class Rows:
    """Column names and row tuples of one table, in insertion order."""

    table: str
    columns: tuple[str, ...]
    rows: list[tuple[object, ...]] = field(default_factory=list)


def _project_rows(project_id: int, name: str, required_votes: int, now: object) -> Rows:
    return Rows(
        "projects",
        (
            "id",
            "name",
            "instructions",
            "n_candidates",
            "overlap",
            "scale",
            "generator",
            "generator_settings",
            "segmenter",
            "segmenter_settings",
            "min_area_fraction",
            "contested_threshold",
            "image_level_tasks",
            "created_at",
        ),  # fmt: skip
        [
            (
                project_id,
                name,
                "Pick the sharpest and the worst candidate.",
                N_CANDIDATES,
                required_votes,
                SCALE,
                "classical",
                "{}",
                "felzenszwalb",
                "{}",
                0.005,
                None,
                True,
                now,
            )
        ],  # fmt: skip
    )


def synthetic_rows(n_tasks: int, *, project_id: int, required_votes: int, now: object) -> Iterator[Rows]:
    """The rows of a project with ``n_tasks`` open tasks, table by table (parents first), with
    explicit ids starting at 1: the tables must be empty."""
    per_source = INSTANCES_PER_SOURCE + 1
    n_sources = math.ceil(n_tasks / per_source)
    width, height = LQ_SIZE
    sr_w, sr_h = width * SCALE, height * SCALE
    yield _project_rows(project_id, f"bench-{n_tasks}", required_votes, now)

    sources = Rows(
        "sources",
        (
            "id",
            "project_id",
            "upload_sha256",
            "filename",
            "kind",
            "lq_sha256",
            "hq_sha256",
            "width",
            "height",
            "degradation",
            "prompt",
            "state",
            "created_at",
        ),  # fmt: skip
    )
    for s in range(1, n_sources + 1):
        digest = f"{s:064x}"
        sources.rows.append(
            (s, project_id, digest, f"img{s}.png", "lq", digest, None, width, height, None, "", "ready", now)
        )
    yield sources

    candidates = Rows(
        "candidates",
        (
            "id",
            "source_id",
            "position",
            "sha256",
            "width",
            "height",
            "generator",
            "model",
            "weights_digest",
            "settings",
            "seed",
        ),  # fmt: skip
    )
    for s in range(1, n_sources + 1):
        for p in range(N_CANDIDATES):
            cid = (s - 1) * N_CANDIDATES + p + 1
            candidates.rows.append(
                (cid, s, p, f"{cid:064x}", sr_w, sr_h, "classical", "bicubic", None, "{}", cid)
            )
    yield candidates

    # A 3x3 grid of boxes stands in for the segments of one source.
    box_w, box_h = sr_w // 3, sr_h // 3
    instances = Rows(
        "instances",
        (
            "id",
            "source_id",
            "position",
            "mask_sha256",
            "x0",
            "y0",
            "x1",
            "y1",
            "area",
            "weight",
            "is_rest",
            "contest_score",
        ),  # fmt: skip
    )
    for s in range(1, n_sources + 1):
        for i in range(INSTANCES_PER_SOURCE):
            iid = (s - 1) * INSTANCES_PER_SOURCE + i + 1
            x0, y0 = (i % 3) * box_w, (i // 3) * box_h
            instances.rows.append(
                (
                    iid,
                    s,
                    i,
                    f"{iid:064x}",
                    x0,
                    y0,
                    x0 + box_w,
                    y0 + box_h,
                    box_w * box_h,
                    1 / INSTANCES_PER_SOURCE,
                    False,
                    None,
                )  # fmt: skip
            )
    yield instances

    tasks = Rows(
        "tasks",
        (
            "id",
            "project_id",
            "source_id",
            "instance_id",
            "kind",
            "required_votes",
            "vote_count",
            "slots_taken",
            "state",
            "created_at",
        ),  # fmt: skip
    )
    task_id = 0
    for s in range(1, n_sources + 1):
        for i in range(per_source):
            if task_id == n_tasks:
                break
            task_id += 1
            # Position 0 is the source's image-level task; the others are its instances.
            instance_id = None if i == 0 else (s - 1) * INSTANCES_PER_SOURCE + i
            kind = "image" if i == 0 else "instance"
            tasks.rows.append((task_id, project_id, s, instance_id, kind, required_votes, 0, 0, "open", now))
    yield tasks


def with_model_defaults(url: str, tables: Iterator[Rows], now: object) -> Iterator[Rows]:
    """Add the columns that the database has and these rows leave out, with the model's Python-side
    default (SQL defaults do not exist for those), so the loader survives new columns in the schema."""
    engine = make_engine(url, pool_size=1)
    inspector = sa.inspect(engine)
    existing = {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}
    engine.dispose()
    for t in tables:
        extra: list[tuple[str, object]] = []
        for column in Base.metadata.tables[t.table].columns:
            default = column.default
            if column.name in t.columns or column.name not in existing.get(t.table, ()) or default is None:
                continue
            if getattr(default, "is_scalar", False):
                value = default.arg  # type: ignore[attr-defined]
            elif getattr(default, "is_callable", False):
                value = default.arg(None)  # type: ignore[attr-defined]
            else:
                continue
            if isinstance(value, datetime):
                value = now  # already in the form this backend's loader writes
            elif isinstance(value, dict | list):
                value = json.dumps(value)
            extra.append((column.name, value))
        if extra:
            names, values = zip(*extra, strict=True)
            t = Rows(t.table, (*t.columns, *names), [(*row, *values) for row in t.rows])
        yield t


def _copy_text(rows: list[tuple[object, ...]]) -> bytes:
    """PostgreSQL COPY text format (our values contain no tabs, newlines or backslashes)."""
    out = io.StringIO()
    for row in rows:
        out.write(
            "\t".join(
                "\\N" if v is None else ("t" if v is True else "f" if v is False else str(v)) for v in row
            )
        )
        out.write("\n")
    return out.getvalue().encode()


def _load_postgres(url: str, tables: Iterator[Rows]) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        with conn.cursor() as cur:
            for t in tables:
                with cur.copy(f"COPY {t.table} ({', '.join(t.columns)}) FROM STDIN") as copy:
                    for start in range(0, len(t.rows), 100_000):
                        copy.write(_copy_text(t.rows[start : start + 100_000]))
                # Ids were given explicitly: move the sequence past them for later inserts.
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{t.table}', 'id'), "
                    f"(SELECT max(id) FROM {t.table}))"
                )
        conn.commit()
        # What autovacuum would do a minute after a bulk load; without statistics the planner
        # guesses, and a benchmark should not measure a guess that production never sees for long.
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


def _load_sqlite(path: str, tables: Iterator[Rows]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        for t in tables:
            marks = ", ".join("?" for _ in t.columns)
            conn.executemany(f"INSERT INTO {t.table} ({', '.join(t.columns)}) VALUES ({marks})", t.rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def bulk_load(url: str, n_tasks: int, *, required_votes: int = 3, project_id: int = 1) -> int:
    """Fill an empty, migrated database with one project of ``n_tasks`` open tasks; its id."""
    now = datetime.now(UTC)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # SQLAlchemy keeps SQLite datetimes as naive ISO text in UTC.
        naive = now.replace(tzinfo=None).isoformat(sep=" ")
        tables = synthetic_rows(n_tasks, project_id=project_id, required_votes=required_votes, now=naive)
        _load_sqlite(parsed.database or "", with_model_defaults(url, tables, naive))
    else:
        tables = synthetic_rows(n_tasks, project_id=project_id, required_votes=required_votes, now=now)
        _load_postgres(url, with_model_defaults(url, tables, now))
    return project_id


def create_annotators(url: str, count: int, *, prefix: str = "annotator") -> list[str]:
    """Annotator users named ``{prefix}{i}``, all with the password PASSWORD (hashed once)."""
    engine = make_engine(url, pool_size=1)
    password_hash = hash_password(PASSWORD)
    names = [f"{prefix}{i}" for i in range(count)]
    with make_session_factory(engine)() as session:
        session.add_all(User(username=n, password_hash=password_hash, role="annotator") for n in names)
        session.commit()
    engine.dispose()
    return names


def reset_votes(url: str) -> None:
    """Forget every vote and lease, so that each measured run starts from the same open tasks."""
    engine = make_engine(url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM votes"))
        conn.execute(sa.text("DELETE FROM leases"))
        conn.execute(
            sa.text(
                "UPDATE tasks SET vote_count = 0, slots_taken = 0, state = 'open' "
                "WHERE vote_count <> 0 OR slots_taken <> 0 OR state <> 'open'"
            )
        )
    if engine.dialect.name == "postgresql":
        # The reset leaves dead index entries right where `next` starts scanning.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE tasks, votes, leases"))
    engine.dispose()


# --------------------------------------------------------------------------------------------------
# The server under test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serve(database_url: str, *, workers: int = 1, workdir: Path, timeout: float = 60) -> Iterator[Server]:
    """``dspo serve`` as a subprocess on a free port; waits for /healthz, stops it on the way out."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPO_")}
    env.update(
        DSPO_DATABASE_URL=database_url,
        DSPO_STORAGE_ROOT=str(workdir / "blobs"),
        # More than one worker refuses to start with in-process jobs; no job runs here, so any
        # broker URL will do, and one worker keeps the embedded default.
        DSPO_BROKER_URL=REDIS_URL if workers > 1 else "",
        DSPO_SECRET_KEY=secrets.token_urlsafe(32),  # a server refuses the default one
        HF_HUB_OFFLINE="1",
    )
    log_path = workdir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dspo.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],  # fmt: skip
            cwd=workdir,  # away from any .env of the checkout
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that its workers stop with it
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"dspo serve exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dspo serve did not answer within {timeout} s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def login(base_url: str, username: str, password: str = PASSWORD) -> str:
    response = httpx.post(
        f"{base_url}/api/v1/auth/login", data={"username": username, "password": password}, timeout=30
    )
    response.raise_for_status()
    return response.json()["access_token"]


# --------------------------------------------------------------------------------------------------
# The load


@dataclass
class Sample:
    start: float
    next_s: float
    vote_s: float


@dataclass
class RunResult:
    loops_per_s: float
    next_p50_ms: float
    next_p99_ms: float
    vote_p50_ms: float
    vote_p99_ms: float
    loops: int
    errors: int
    empty: int  # 204s: nothing left for this annotator
    # CPU milliseconds per measured loop: server (all its workers), postgres, client (this process).
    cpu_ms_per_loop: dict[str, float] = field(default_factory=dict)
    other_cores: float = 0.0  # cores busy with work outside this benchmark, on average


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Client(Protocol):
    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]: ...

    def close(self) -> None: ...


class HttpxClient:
    """httpx, as an API client would use it; it costs the load generator about 1.8 ms of CPU per
    request here, which on two shared cores is taken from the server."""

    def __init__(self, base_url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        self.client = httpx.Client(base_url=base_url, headers=headers, timeout=60)

    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        response = self.client.post(path, json=body)
        return response.status_code, response.json() if response.content else None

    def close(self) -> None:
        self.client.close()


class RawClient:
    """http.client on one keep-alive connection: about 0.7 ms of CPU per request, so that more of the
    two cores go to the server under test."""

    def __init__(self, base_url: str, token: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        self.connection.request("POST", path, body=json.dumps(body) if body else None, headers=self.headers)
        response = self.connection.getresponse()
        content = response.read()
        return response.status, json.loads(content) if content else None

    def close(self) -> None:
        self.connection.close()


CLIENTS: dict[str, type[HttpxClient] | type[RawClient]] = {"httpx": HttpxClient, "http.client": RawClient}


def annotate(
    client: Client,
    project_id: int,
    stop: threading.Event,
    samples: list[Sample],
    counters: dict[str, int],
    lock: threading.Lock,
    seed: int,
) -> None:
    """One annotator: next, then a pick vote, as fast as the server answers."""
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            status, task = client.post(f"/api/v1/projects/{project_id}/next")
            t1 = time.perf_counter()
            if status == 204:
                with lock:
                    counters["empty"] += 1
                time.sleep(0.05)
                continue
            if status != 200:
                with lock:
                    counters["errors"] += 1
                continue
            best, worst = rng.sample([c["id"] for c in task["candidates"]], 2)
            body = {
                "outcome": "pick",
                "best_candidate_id": best,
                "worst_candidate_id": worst,
                "client_submission_id": uuid.uuid4().hex,
                "lead_time_ms": rng.randint(1000, 9000),
            }
            status, _ = client.post(f"/api/v1/tasks/{task['id']}/vote", body)
            t2 = time.perf_counter()
            with lock:
                if status in (200, 201):
                    samples.append(Sample(t0, t1 - t0, t2 - t1))
                else:
                    counters["errors"] += 1
    finally:
        client.close()


def cpu_seconds() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, user+system CPU seconds) of every process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # it exited meanwhile
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / tick)
    return table


def cpu_split(table: dict[int, tuple[int, str, float]], server_pid: int) -> dict[str, float]:
    """CPU seconds of the server (its process tree), of PostgreSQL (every postgres process: other
    databases on this machine count too) and of this process (the load generator)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [server_pid]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return {
        "server": sum(table[p][2] for p in tree if p in table),
        "postgres": sum(cpu for _, comm, cpu in table.values() if comm.startswith("postgres")),
        "client": table.get(os.getpid(), (0, "", 0.0))[2],
    }


def machine_busy_seconds() -> float:
    """CPU seconds spent by all cores outside idle and iowait since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_load(
    server: Server,
    project_id: int,
    tokens: list[str],
    *,
    duration: float,
    warmup: float,
    client: str = "httpx",
) -> RunResult:
    """Drive the loop with one thread per token; only loops that start after the warm-up and end
    within the measured window count. CPU use is measured over the same window."""
    stop = threading.Event()
    lock = threading.Lock()
    samples: list[Sample] = []
    counters = {"errors": 0, "empty": 0}
    threads = [
        threading.Thread(
            target=annotate,
            args=(CLIENTS[client](server.base_url, token), project_id, stop, samples, counters, lock, i),
            daemon=True,
        )
        for i, token in enumerate(tokens)
    ]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    cpu_before, busy_before = cpu_split(cpu_seconds(), server.process.pid), machine_busy_seconds()
    time.sleep(duration)
    cpu_after, busy_after = cpu_split(cpu_seconds(), server.process.pid), machine_busy_seconds()
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    window_start, window_end = begin + warmup, begin + warmup + duration
    measured = [s for s in samples if s.start >= window_start and s.start + s.next_s + s.vote_s <= window_end]
    next_ms = [s.next_s * 1000 for s in measured]
    vote_ms = [s.vote_s * 1000 for s in measured]
    # A process that exits in between takes its CPU time with it: never report less than nothing.
    cpu = {k: max(0.0, cpu_after[k] - cpu_before[k]) for k in cpu_after}
    cpu["other"] = max(0.0, busy_after - busy_before - sum(cpu.values()))
    per_loop = {k: 1000 * v / max(1, len(measured)) for k, v in cpu.items()}
    return RunResult(
        loops_per_s=len(measured) / duration,
        next_p50_ms=percentile(next_ms, 50),
        next_p99_ms=percentile(next_ms, 99),
        vote_p50_ms=percentile(vote_ms, 50),
        vote_p99_ms=percentile(vote_ms, 99),
        loops=len(measured),
        errors=counters["errors"],
        empty=counters["empty"],
        cpu_ms_per_loop=per_loop,
        other_cores=cpu["other"] / duration,
    )


# --------------------------------------------------------------------------------------------------
# The matrix and the report


@dataclass
class Row:
    backend: str
    tasks: int
    concurrency: int
    workers: int
    client: str
    result: RunResult


HEADER = (
    "| backend | tasks in DB | annotators | server workers | client | loops/s | next p50 ms | next p99 ms "
    "| vote p50 ms | vote p99 ms | errors | CPU ms/loop: server | postgres | client | other load (cores) |"
)


def format_row(row: Row) -> str:
    r = row.result
    cpu = r.cpu_ms_per_loop
    return (
        f"| {row.backend} | {row.tasks:,} | {row.concurrency} | {row.workers} | {row.client} "
        f"| {r.loops_per_s:.0f} | {r.next_p50_ms:.1f} | {r.next_p99_ms:.1f} | {r.vote_p50_ms:.1f} "
        f"| {r.vote_p99_ms:.1f} | {r.errors} | {cpu.get('server', math.nan):.1f} "
        f"| {cpu.get('postgres', math.nan):.1f} | {cpu.get('client', math.nan):.1f} | {r.other_cores:.2f} |"
    )


def ratio_lines(rows: list[Row]) -> list[str]:
    """p50(next) at the largest size over p50(next) at the smallest, for each other setting."""
    sizes = sorted({r.tasks for r in rows})
    if len(sizes) < 2:
        return []
    small, large = sizes[0], sizes[-1]
    by_key = {(r.backend, r.tasks, r.workers, r.concurrency, r.client): r for r in rows}
    lines = []
    for (backend, tasks, workers, concurrency, client), row in by_key.items():
        base_row = by_key.get((backend, small, workers, concurrency, client))
        if tasks != large or base_row is None:
            continue
        lines.append(
            f"p50(next) at {large:,} / at {small:,} tasks: "
            f"{row.result.next_p50_ms / base_row.result.next_p50_ms:.2f}x "
            f"({backend}, {workers} workers, {concurrency} annotators, {client})"
        )
    return lines


def ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgres", help="comma list of sqlite, postgres")
    parser.add_argument("--sizes", type=ints, default=[10_000, 1_000_000], help="tasks in the DB, comma list")
    parser.add_argument("--concurrency", type=ints, default=[8], help="annotators, comma list")
    parser.add_argument("--workers", type=ints, default=[1, 2], help="uvicorn workers, comma list")
    parser.add_argument(
        "--clients", default="httpx,http.client", help="load generator HTTP clients, comma list"
    )
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=2, help="seconds before measuring")
    parser.add_argument("--required-votes", type=int, default=3, help="k, votes per task")
    args = parser.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    args.clients = [c for c in args.clients.split(",") if c]
    unknown = set(args.backends) - {"sqlite", "postgres"} | set(args.clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown backends or clients {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[Row] = []
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    sys.stdout.flush()
    for backend in args.backends:
        for size in args.sizes:
            with database(backend) as url, tempfile.TemporaryDirectory(prefix="dspo-bench-") as tmp:
                started = time.perf_counter()
                project_id = bulk_load(url, size, required_votes=args.required_votes)
                names = create_annotators(url, max(args.concurrency))
                print(
                    f"<!-- {backend}: loaded {size:,} tasks in {time.perf_counter() - started:.1f} s -->",
                    file=sys.stderr,
                )
                tokens: list[str] = []
                for workers in args.workers:
                    with serve(url, workers=workers, workdir=Path(tmp)) as server:
                        tokens = tokens or [login(server.base_url, n) for n in names]
                        for concurrency in args.concurrency:
                            for client in args.clients:
                                reset_votes(url)
                                result = run_load(
                                    server,
                                    project_id,
                                    tokens[:concurrency],
                                    duration=args.duration,
                                    warmup=args.warmup,
                                    client=client,
                                )
                                row = Row(backend, size, concurrency, workers, client, result)
                                rows.append(row)
                                print(format_row(row))
                                sys.stdout.flush()
                        if " 500 " in server.log() or "Traceback" in server.log():
                            print(f"server log shows errors:\n{server.log()[-4000:]}", file=sys.stderr)
    print()
    for line in ratio_lines(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
