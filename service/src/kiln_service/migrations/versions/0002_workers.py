"""Worker advertisement: the ``workers`` table.

Revision ID: 0002_workers
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_workers"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``workers`` (one row per running worker, refreshed by its heartbeat)."""
    op.create_table(
        "workers",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("targets", sa.JSON, nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("last_seen_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_workers_last_seen_at", "workers", ["last_seen_at"])


def downgrade() -> None:
    """Drop ``workers``."""
    op.drop_index("ix_workers_last_seen_at", "workers")
    op.drop_table("workers")
