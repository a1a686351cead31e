"""Researchers' tokens can be revoked; a study's owner can grant other researchers read access.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("researchers") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "study_grants",
        sa.Column("study_id", sa.String(32), sa.ForeignKey("studies.id"), primary_key=True),
        sa.Column("researcher", sa.String(63), sa.ForeignKey("researchers.name"), primary_key=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("study_grants")
    with op.batch_alter_table("researchers") as batch:
        batch.drop_column("revoked_at")
