"""The compile cache: ``compile_cache``, ``jobs.cache_key``/``cache_source``, ``workers.toolchains``.

Revision ID: 0008_compile_cache
Revises: 0007_pipeline_sources
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_compile_cache"
down_revision = "0007_pipeline_sources"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``compile_cache``; add the jobs' cache columns and the workers' toolchains."""
    op.create_table(
        "compile_cache",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("source_job", sa.String(32), nullable=False),
        sa.Column("source_attempt", sa.Integer),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure", sa.JSON),
        sa.Column("artifacts", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("last_used_at", sa.DateTime, nullable=False),
        sa.Column("hits", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_compile_cache_lru", "compile_cache", ["tenant", "last_used_at"])
    op.create_index("ix_compile_cache_source", "compile_cache", ["source_job"])
    op.add_column("jobs", sa.Column("cache_key", sa.String(64)))
    op.add_column("jobs", sa.Column("cache_source", sa.String(32)))
    op.create_index("ix_jobs_cache_source", "jobs", ["cache_source"])
    op.add_column("workers", sa.Column("toolchains", sa.JSON))


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("toolchains")
    op.drop_index("ix_jobs_cache_source", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cache_source")
        batch.drop_column("cache_key")
    op.drop_table("compile_cache")
