"""Jobs record where their model came from and where their outputs go: ``jobs.pipeline``.

Revision ID: 0007_pipeline_sources
Revises: 0006_worker_sandbox
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_pipeline_sources"
down_revision = "0006_worker_sandbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``jobs.pipeline`` (JSON: ``model_source``, ``output_location``, ``mlflow_register``,
    ``exports``; NULL for jobs that use none of them)."""
    op.add_column("jobs", sa.Column("pipeline", sa.JSON()))


def downgrade() -> None:
    """Drop ``jobs.pipeline``."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pipeline")
