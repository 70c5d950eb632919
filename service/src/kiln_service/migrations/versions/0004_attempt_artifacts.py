"""Artifacts per attempt: ``jobs.published_attempt``, the attempt whose outputs a job serves.

Each attempt writes under ``jobs/<id>/attempt-<fence>/``; the fenced finish that publishes an
attempt's artifact list also records its fence here. Existing jobs keep NULL and are still read
from ``jobs/<id>/<name>``.

Revision ID: 0004_attempt_artifacts
Revises: 0004_shared_limits
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_attempt_artifacts"
down_revision = "0004_shared_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``jobs.published_attempt`` (nullable: old jobs keep their old keys)."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("published_attempt", sa.Integer, nullable=True))


def downgrade() -> None:
    """Drop ``jobs.published_attempt``."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("published_attempt")
