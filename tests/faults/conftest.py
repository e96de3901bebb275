"""What the fault tests break: a private Redis and a private PostgreSQL (never the shared servers, which
other tests use), and `dspo worker` / `dspo beat` processes, each in a process group of its own so that a
test can kill one as a whole (SIGKILL, as the kernel or `docker kill` does)."""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from glob import glob
from pathlib import Path

import pytest

from tests.conftest import cannot_run

# Quick recovery, so that the tests are short: a heartbeat a second, silent for 5 s is dead, ticks every
# second. DSPO_BROKER_VISIBILITY_TIMEOUT_SECONDS keeps its default (an hour): recovery must not need it.
FAST_RECOVERY = {
    "DSPO_JOB_HEARTBEAT_SECONDS": "1",
    "DSPO_JOB_STALE_SECONDS": "5",
    "DSPO_JOB_SWEEP_SECONDS": "1",
    "DSPO_JOB_RELAY_SECONDS": "1",
    "DSPO_JOB_REDISPATCH_SECONDS": "30",
    "DSPO_JOB_MAX_ATTEMPTS": "3",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], object], what: str, timeout: float = 120, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(interval)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PrivateRedis:
    """A redis-server of this test, on a free port, with append-only persistence (as in production:
    messages survive its restart)."""

    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None:
            cannot_run("redis-server is not installed")
        self.root, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root)]
            + ["--appendonly", "yes", "--save", "", "--logfile", str(self.root / "redis.log")],
        )
        wait_for(lambda: _port_open(self.port), "the private Redis to listen", timeout=30, interval=0.05)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits, as `docker compose stop` does."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


class PrivatePostgres:
    """A PostgreSQL cluster of this test (initdb in a temporary folder, a free port), run as the
    `postgres` user when the tests run as root (the server refuses root)."""

    def __init__(self) -> None:
        found = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl")) or (
            [shutil.which("pg_ctl")] if shutil.which("pg_ctl") else []
        )
        if not found:
            cannot_run("PostgreSQL's server programs (pg_ctl, initdb) are not installed")
        self.bin = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="dspo-faults-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                cannot_run("the tests run as root and there is no `postgres` user to run a private server")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / program), *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    postgres = PrivatePostgres()
    postgres.start()
    try:
        yield postgres
    finally:
        postgres.remove()


@contextmanager
def dspo_process(env: dict[str, str], log_path: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`dspo <args>` in a process group of its own (so that it and its pool processes can be killed as
    a whole); stopped at the end if still running, the end of its log printed."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dspo.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    kill_group(process)
            print(f"--- {log_path.name} ---\n{log_path.read_text()[-4000:]}")


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process and every process of its group (a worker and its pool), then reap it."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
