"""Limits shared by API replicas: ``rate_limits`` and ``in_flight_requests``.

Revision ID: 0004_shared_limits
Revises: 0003_api_keys
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_shared_limits"
down_revision = "0003_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the per-tenant rate times and the in-flight ``Idempotency-Key`` leases."""
    op.create_table(
        "rate_limits",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("tat_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "in_flight_requests",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(256), primary_key=True),
        sa.Column("holder", sa.String(32), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("in_flight_requests")
    op.drop_table("rate_limits")
