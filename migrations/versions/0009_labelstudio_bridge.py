"""labelstudio_links, labelstudio_answers: the Label Studio bridge

Revision ID: 0009
Revises: 0006
Create Date: 2026-11-30 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dspo.models

revision: str = "0009"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "labelstudio_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=1000), nullable=False),
        sa.Column("ls_project_id", sa.Integer(), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=True),
        sa.Column("user_emails", sa.JSON(), nullable=False),
        sa.Column("tasks_pushed", sa.Integer(), nullable=False),
        sa.Column("last_push_at", dspo.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_sync_at", dspo.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_labelstudio_links_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labelstudio_links")),
        sa.UniqueConstraint("project_id", name=op.f("uq_labelstudio_links_project_id")),
    )
    op.create_table(
        "labelstudio_answers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.BigInteger(), nullable=False),
        sa.Column("ls_task_id", sa.BigInteger(), nullable=True),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("ls_user_id", sa.BigInteger(), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("vote_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("result_sha256", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("ls_updated_at", dspo.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("received_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("changed_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_labelstudio_answers_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_labelstudio_answers_task_id_tasks"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_labelstudio_answers_user_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["vote_id"], ["votes.id"], name=op.f("fk_labelstudio_answers_vote_id_votes"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labelstudio_answers")),
        sa.UniqueConstraint("project_id", "annotation_id", name=op.f("uq_labelstudio_answers_project_id")),
    )


def downgrade() -> None:
    op.drop_table("labelstudio_answers")
    op.drop_table("labelstudio_links")
