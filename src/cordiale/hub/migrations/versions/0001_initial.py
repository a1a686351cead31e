"""The first schema: sites, researchers, studies, rounds, tasks.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("cert_serial", sa.String(64), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        _ts("created_at"),
        _ts("last_seen", nullable=True),
        sa.Column("datasets", sa.JSON, nullable=False),
    )
    op.create_table(
        "researchers",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("org", sa.String(63), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _ts("expires_at"),
        _ts("created_at"),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(63), sa.ForeignKey("researchers.name"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rounds_done", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("setup", sa.JSON, nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
    )
    op.create_table(
        "rounds",
        sa.Column("study_id", sa.String(32), sa.ForeignKey("studies.id"), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True),
        _ts("committed_at"),
        sa.Column("nodes", sa.JSON, nullable=False),
        sa.Column("failures", sa.JSON, nullable=False),
        sa.Column("train_loss", sa.Float, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("evaluation", sa.JSON, nullable=True),
        sa.Column("checkpoint", sa.String(300), nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("message_id", sa.String(32), primary_key=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("site", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
    )
    op.create_index("ix_tasks_study_id", "tasks", ["study_id"])
    op.create_index("ix_tasks_site", "tasks", ["site"])


def downgrade() -> None:
    for table in ("tasks", "rounds", "studies", "researchers", "sites"):
        op.drop_table(table)
