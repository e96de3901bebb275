"""Shared fixtures: fresh databases on SQLite and PostgreSQL, a fresh Redis key prefix, a runtime.

PostgreSQL and Redis tests skip with a reason when the server is unreachable, except on CI (CI=true),
where they must run and an unreachable server is an error."""

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dspo.migrate import upgrade  # noqa: E402
from dspo.models import Base  # noqa: E402
from dspo.runtime import Runtime  # noqa: E402
from dspo.settings import Settings  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get("DSPO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DSPO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ON_CI = os.environ.get("CI", "").lower() == "true"


def cannot_run(message: str) -> None:
    """Skip, saying why, on a developer machine; on CI (CI=true) every test must run, so fail there."""
    if ON_CI:
        pytest.fail(f"{message}. On CI this test must run.")
    pytest.skip(message)


def unavailable(what: str, error: Exception) -> None:
    cannot_run(f"{what} is not reachable ({error.__class__.__name__}: {error}); start it to run this test")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating per test would be slow)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@contextmanager
def new_postgres_database() -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped afterwards."""
    admin = sa.create_engine(
        POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    name = f"dspo_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unavailable("PostgreSQL", exc)
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database created for this test session, migrated, dropped at the end."""
    with new_postgres_database() as url:
        upgrade(url)
        yield url


def _truncate_postgres(url: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "dspo.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _truncate_postgres(url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        storage_root=tmp_path / "blobs",
        broker_url="",
        lease_seconds=300,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(settings)
    yield runtime
    from dspo.jobs import shutdown_executor

    shutdown_executor(runtime)
    runtime.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as exc:
        unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of its own, so that leftovers of other runs never matter; its keys go at the end."""
    import redis

    prefix = f"dspo-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_settings(
    postgres_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> tuple[Settings, dict[str, str]]:
    """Settings for production mode on a freshly emptied test database, and the environment that gives
    a `dspo worker` subprocess the same settings."""
    _truncate_postgres(postgres_url)
    settings = Settings(
        database_url=postgres_url,
        broker_url=redis_url,
        redis_key_prefix=redis_prefix,
        storage_root=tmp_path / "blobs",
        _env_file=None,  # type: ignore[call-arg]
    )
    env = {
        **os.environ,
        "DSPO_DATABASE_URL": postgres_url,
        "DSPO_BROKER_URL": redis_url,
        "DSPO_REDIS_KEY_PREFIX": redis_prefix,
        "DSPO_STORAGE_ROOT": str(settings.storage_root),
    }
    return settings, env


@contextmanager
def celery_worker(env: dict[str, str], log_path: Path, *options: str) -> Iterator[subprocess.Popen]:
    """A `dspo worker` subprocess (with these options) in the environment of `production_settings`; its
    output goes to log_path, whose end is printed when it is stopped on the way out."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dspo.cli", "worker", *options],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(1)
            if process.poll() is not None:
                pytest.fail(f"the Celery worker exited at start:\n{log_path.read_text()}")
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            print(log_path.read_text()[-5000:])
