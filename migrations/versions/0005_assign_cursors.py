"""assign_cursors, assign_rechecks: `next` starts from a per-annotator cursor (issue 14)

Existing annotators get no cursor row: their first `next` starts from the first task, as before,
and creates it.

Revision ID: 0005
Revises: 0007
Create Date: 2026-11-30 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "assign_cursors",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("last_task_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_assign_cursors_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_assign_cursors_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "user_id", name=op.f("pk_assign_cursors")),
    )
    op.create_table(
        "assign_rechecks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assign_rechecks")),
    )
    op.create_index(
        "ix_assign_rechecks_project_user",
        "assign_rechecks",
        ["project_id", "user_id", "task_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_assign_rechecks_project_user", table_name="assign_rechecks")
    op.drop_table("assign_rechecks")
    op.drop_table("assign_cursors")
