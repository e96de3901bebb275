"""End-to-end fixtures: a fresh PostgreSQL database and a running `dspo serve` process on it."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.api import Server, serve

# Two workers, so that requests race in separate processes as they do in production; no job runs in
# these tests, so the broker URL (which more than one worker requires) is never connected to.
SERVER_WORKERS = 2


@pytest.fixture
def e2e_database_url(postgres_url: str) -> str:
    """The session's PostgreSQL database (tests/conftest.py), emptied for this test."""
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    # The tables the database has (not the models'), so a migration in progress elsewhere cannot break it.
    names = [n for n in sa.inspect(engine).get_table_names() if n != "alembic_version"]
    tables = ", ".join(f'"{n}"' for n in names)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return postgres_url


@pytest.fixture
def running_server(e2e_database_url: str, tmp_path: Path) -> Iterator[Server]:
    with serve(e2e_database_url, workers=SERVER_WORKERS, workdir=tmp_path) as server:
        yield server
