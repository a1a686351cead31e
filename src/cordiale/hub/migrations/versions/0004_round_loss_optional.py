"""A round's training loss may be absent: sites under differential privacy do not report it.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.alter_column("train_loss", existing_type=sa.Float, nullable=True)


def downgrade() -> None:
    op.execute("UPDATE rounds SET train_loss = 'NaN' WHERE train_loss IS NULL")
    with op.batch_alter_table("rounds") as batch:
        batch.alter_column("train_loss", existing_type=sa.Float, nullable=False)
