"""projects.min_lead_time_ms: answers faster than this are lead-time outliers on the quality page
(2000 ms for existing projects)

Revision ID: 0013
Revises: 0011
Create Date: 2026-11-30 19:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("min_lead_time_ms", sa.Integer(), nullable=False, server_default=sa.text("2000"))
        )


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("min_lead_time_ms")
