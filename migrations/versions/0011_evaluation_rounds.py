"""evaluation rounds: evaluations, promotion_decisions; evaluation_id on tasks and candidates; the
projects' auto_promote and retrain_evaluate settings (off for existing projects)

Revision ID: 0011
Revises: 0005
Create Date: 2026-11-30 15:47:07.439226
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dspo.models

revision: str = "0011"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("a", sa.JSON(), nullable=False),
        sa.Column("b", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("required_votes", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("trained_model_version_id", sa.Integer(), nullable=True),
        sa.Column("created_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", dspo.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_evaluations_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluations_project_id"), ["project_id"], unique=False)

    op.create_table(
        "promotion_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("answers", sa.Integer(), nullable=False),
        sa.Column("wins_b", sa.Integer(), nullable=False),
        sa.Column("wins_a", sa.Integer(), nullable=False),
        sa.Column("ties", sa.Integer(), nullable=False),
        sa.Column("win_rate", sa.Float(), nullable=True),
        sa.Column("lower_bound", sa.Float(), nullable=False),
        sa.Column("upper_bound", sa.Float(), nullable=False),
        sa.Column("sign_test_p", sa.Float(), nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("created_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["evaluations.id"],
            name=op.f("fk_promotion_decisions_evaluation_id_evaluations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_promotion_decisions_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_decisions")),
        sa.UniqueConstraint("evaluation_id", name=op.f("uq_promotion_decisions_evaluation_id")),
    )
    with op.batch_alter_table("promotion_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promotion_decisions_project_id"), ["project_id"], unique=False)

    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluation_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_candidates_evaluation_id"), ["evaluation_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_candidates_evaluation_id_evaluations"),
            "evaluations",
            ["evaluation_id"],
            ["id"],
            ondelete="CASCADE",
        )

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("auto_promote", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("retrain_evaluate", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluation_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_tasks_evaluation_id"), ["evaluation_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_tasks_evaluation_id_evaluations"),
            "evaluations",
            ["evaluation_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_tasks_evaluation_id_evaluations"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_tasks_evaluation_id"))
        batch_op.drop_column("evaluation_id")

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("retrain_evaluate")
        batch_op.drop_column("auto_promote")

    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_candidates_evaluation_id_evaluations"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_candidates_evaluation_id"))
        batch_op.drop_column("evaluation_id")

    with op.batch_alter_table("promotion_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_promotion_decisions_project_id"))

    op.drop_table("promotion_decisions")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_project_id"))

    op.drop_table("evaluations")
