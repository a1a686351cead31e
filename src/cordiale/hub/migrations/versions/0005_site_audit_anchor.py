"""Each site's audit anchor: the newest head of its audit log that its node showed the hub.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("audit_count", sa.Integer, nullable=True))
        batch.add_column(sa.Column("audit_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("audit_hash")
        batch.drop_column("audit_count")
