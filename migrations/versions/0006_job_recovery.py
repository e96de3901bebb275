"""job recovery: the queue, dispatch time, worker, heartbeat and memory of every job

Revision ID: 0006
Revises: 0008
Create Date: 2026-11-30 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dspo.models

revision: str = "0006"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("queue", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("dispatched_at", dspo.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("worker", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", dspo.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("worker_rss_bytes", sa.BigInteger(), nullable=True))
    op.create_index("ix_jobs_state", "jobs", ["state"], unique=False)
    # Jobs queued before this revision were dispatched the old way; the relay sends any still waiting.


def downgrade() -> None:
    op.drop_index("ix_jobs_state", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("worker_rss_bytes", "heartbeat_at", "worker", "dispatched_at", "queue"):
            batch.drop_column(column)
