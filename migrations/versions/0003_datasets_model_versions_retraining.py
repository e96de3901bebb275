"""datasets, model_versions; projects: retraining settings and the model version in use

Existing projects get retraining off, an interval of 60 minutes and empty train settings (server
defaults).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 02:41:39.253012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dspo.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("request_key", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("max_vote_id", sa.BigInteger(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("files", sa.JSON(), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("retrain", sa.Boolean(), nullable=False),
        sa.Column("train_job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", dspo.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_datasets_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("project_id", "request_key", name="uq_datasets_project_request_key"),
        sa.UniqueConstraint("project_id", "version", name="uq_datasets_project_version"),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column("backbone", sa.String(length=32), nullable=False),
        sa.Column("base_model", sa.String(length=1000), nullable=False),
        sa.Column("lora_path", sa.String(length=1000), nullable=False),
        sa.Column("lora_sha256", sa.String(length=64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", dspo.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_model_versions_dataset_id_datasets"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_model_versions_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_model_versions_project_id")),
    )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retrain_min_votes", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("retrain_interval_minutes", sa.Integer(), nullable=False, server_default="60")
        )
        batch_op.add_column(sa.Column("train_settings", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("model_version_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("model_version_id")
        batch_op.drop_column("train_settings")
        batch_op.drop_column("retrain_interval_minutes")
        batch_op.drop_column("retrain_min_votes")

    op.drop_table("model_versions")
    op.drop_table("datasets")
