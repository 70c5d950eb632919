"""Initial schema: jobs and job_logs.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``jobs`` and ``job_logs``."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, server_default="default"),
        sa.Column("name", sa.String(256)),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("stage_message", sa.Text),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("flags", sa.Text, nullable=False, server_default=""),
        sa.Column("signature", sa.String(256), nullable=False),
        sa.Column("placement", sa.JSON),
        sa.Column("input_shapes", sa.JSON),
        sa.Column("timeout_seconds", sa.Integer, nullable=False),
        sa.Column("input_digests", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failure", sa.JSON),
        sa.Column("artifacts", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("worker_id", sa.String(256)),
        sa.Column("fence", sa.Integer, nullable=False, server_default="0"),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.Column("lease_expires_at", sa.DateTime),
        sa.Column("log_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("idempotency_key", sa.String(256)),
        sa.Column("request_sha256", sa.String(64)),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant", "created_at", "id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "job_logs",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("job_logs")
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_index("ix_jobs_tenant_created", "jobs")
    op.drop_table("jobs")
