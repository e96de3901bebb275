"""projects: require_content, require_defect; vote_revisions (answers replaced by an undo)

Existing projects get false for both settings (server default).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 02:38:28.476902
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dspo.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vote_revisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("vote_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("best_candidate_id", sa.Integer(), nullable=True),
        sa.Column("worst_candidate_id", sa.Integer(), nullable=True),
        sa.Column("content_text", sa.Text(), nullable=False),
        sa.Column("defect_text", sa.Text(), nullable=False),
        sa.Column("lead_time_ms", sa.Integer(), nullable=True),
        sa.Column("client_submission_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("replaced_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["best_candidate_id"],
            ["candidates.id"],
            name=op.f("fk_vote_revisions_best_candidate_id_candidates"),
        ),
        sa.ForeignKeyConstraint(
            ["vote_id"], ["votes.id"], name=op.f("fk_vote_revisions_vote_id_votes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["worst_candidate_id"],
            ["candidates.id"],
            name=op.f("fk_vote_revisions_worst_candidate_id_candidates"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vote_revisions")),
    )
    with op.batch_alter_table("vote_revisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vote_revisions_vote_id"), ["vote_id"], unique=False)

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("require_content", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("require_defect", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("require_defect")
        batch_op.drop_column("require_content")

    with op.batch_alter_table("vote_revisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vote_revisions_vote_id"))

    op.drop_table("vote_revisions")
