"""held-out sources: sources.held_out, and the projects' seeded held-out fraction

Revision ID: 0008
Revises: 0004
Create Date: 2026-11-30 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_out", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_out_fraction", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("held_out_seed", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("held_out_seed")
        batch_op.drop_column("held_out_fraction")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("held_out")
