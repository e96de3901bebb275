"""The annotator's hot statements find a task's candidates through their source on SQLite. The
planner once took the index on candidates.evaluation_id for `evaluation_id IS NULL`, which every
candidate of every task matches: `next` and `vote` then read all candidates (120 ms at 1M tasks)."""

import re
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import Select

from dspo import assign
from dspo.migrate import upgrade


def query_plan(database: Path, stmt: Select) -> list[str]:
    # aggregate_strings' separator is a post-compile parameter: put its value in the text.
    sql = re.sub(r"__\[POSTCOMPILE_\w+\]", "','", str(stmt.compile(dialect=sqlite.dialect())))
    with sqlite3.connect(database) as connection:
        rows = connection.execute("EXPLAIN QUERY PLAN " + sql, [1] * sql.count("?")).fetchall()
    return [row[-1] for row in rows]


@pytest.mark.parametrize("name", ["_TASK_FOR_VOTE", "_TASK_VIEW"])
def test_candidates_are_found_through_their_source(tmp_path: Path, name: str) -> None:
    database = tmp_path / "plans.db"
    upgrade(f"sqlite:///{database}")
    plan = query_plan(database, getattr(assign, name))
    candidate_steps = [step for step in plan if "candidates" in step]
    assert candidate_steps, plan
    assert all("(source_id=?)" in step for step in candidate_steps), plan
