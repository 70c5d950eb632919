"""API keys: the ``api_keys`` table (hashed bearer keys, each owned by a tenant).

Revision ID: 0003_api_keys
Revises: 0002_workers
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_api_keys"
down_revision = "0002_workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``api_keys``: only the sha256 of a key is stored, with a short prefix to find it."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime),
        sa.Column("last_used_at", sa.DateTime),
        sa.UniqueConstraint("key_sha256", name="uq_api_keys_key_sha256"),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])


def downgrade() -> None:
    """Drop ``api_keys``."""
    op.drop_index("ix_api_keys_tenant", "api_keys")
    op.drop_index("ix_api_keys_prefix", "api_keys")
    op.drop_table("api_keys")
