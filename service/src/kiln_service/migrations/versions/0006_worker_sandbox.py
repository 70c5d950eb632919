"""Worker advertisement says how the worker isolates compiles: ``workers.sandbox``.

Revision ID: 0006_worker_sandbox
Revises: 0005_webhooks
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_worker_sandbox"
down_revision = "0005_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``workers.sandbox`` (``bubblewrap`` or ``none``; empty for older workers)."""
    op.add_column("workers", sa.Column("sandbox", sa.String(32)))


def downgrade() -> None:
    """Drop ``workers.sandbox``."""
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("sandbox")
