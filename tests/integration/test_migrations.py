"""The alembic migrations and the ORM models describe the same schema, on SQLite and PostgreSQL."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from dspo.db import make_engine
from dspo.migrate import upgrade
from dspo.models import Base
from tests.conftest import new_postgres_database


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert set(inspect(connection).get_table_names()) >= set(Base.metadata.tables)
    engine.dispose()


def test_upgrade_is_idempotent(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() is not None
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all, to migrate step by step."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with new_postgres_database() as url:
        yield url


def test_existing_annotators_join_existing_projects(empty_database_url: str) -> None:
    """Migration 0007: every non-admin user of before becomes a member of every project of before, so
    that nobody loses access on upgrading (docs/decisions.md, Membership and roles)."""
    upgrade(empty_database_url, "0004")
    engine = make_engine(empty_database_url)
    now = "2026-11-01 10:00:00"
    with engine.begin() as conn:
        for name, role in [("root", "admin"), ("ana", "annotator"), ("ben", "annotator")]:
            conn.execute(
                sa.text(
                    "INSERT INTO users (username, password_hash, role, is_active, created_at) "
                    "VALUES (:name, 'x', :role, true, :now)"
                ),
                {"name": name, "role": role, "now": now},
            )
        for name in ("one", "two"):
            conn.execute(
                sa.text(
                    "INSERT INTO projects (name, instructions, n_candidates, overlap, scale, generator, "
                    "generator_settings, segmenter, segmenter_settings, min_area_fraction, "
                    "image_level_tasks, require_content, require_defect, retrain_interval_minutes, "
                    "train_settings, created_at) VALUES (:name, '', 4, 3, 4, 'classical', '{}', "
                    "'regions', '{}', 0.005, true, false, false, 60, '{}', :now)"
                ),
                {"name": name, "now": now},
            )
    upgrade(empty_database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT projects.name, users.username FROM project_members "
                "JOIN projects ON projects.id = project_members.project_id "
                "JOIN users ON users.id = project_members.user_id ORDER BY 1, 2"
            )
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("one", "ana"), ("one", "ben"), ("two", "ana"), ("two", "ben")]
