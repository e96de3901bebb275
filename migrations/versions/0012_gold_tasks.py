"""gold tasks: the projects' gold settings, the known answer of a gold task, gold_resumes

Revision ID: 0012
Revises: 0014
Create Date: 2026-11-30 19:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dspo.models

revision: str = "0012"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gold_resumes",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("resumed_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resumed_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_gold_resumes_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_gold_resumes_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "user_id", name=op.f("pk_gold_resumes")),
    )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gold_rate", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("gold_threshold", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gold_min_answers", sa.Integer(), nullable=False, server_default="5"))
        batch_op.add_column(sa.Column("sanity_tasks", sa.Integer(), nullable=False, server_default="0"))

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gold_best_candidate_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gold_worst_candidate_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gold_by", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_tasks_gold_best_candidate_id_candidates"),
            "candidates",
            ["gold_best_candidate_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_tasks_gold_worst_candidate_id_candidates"),
            "candidates",
            ["gold_worst_candidate_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_tasks_gold_by_users"), "users", ["gold_by"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_tasks_gold_by_users"), type_="foreignkey")
        batch_op.drop_constraint(
            batch_op.f("fk_tasks_gold_worst_candidate_id_candidates"), type_="foreignkey"
        )
        batch_op.drop_constraint(batch_op.f("fk_tasks_gold_best_candidate_id_candidates"), type_="foreignkey")
        batch_op.drop_column("gold_by")
        batch_op.drop_column("gold_worst_candidate_id")
        batch_op.drop_column("gold_best_candidate_id")

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("sanity_tasks")
        batch_op.drop_column("gold_min_answers")
        batch_op.drop_column("gold_threshold")
        batch_op.drop_column("gold_rate")

    op.drop_table("gold_resumes")
