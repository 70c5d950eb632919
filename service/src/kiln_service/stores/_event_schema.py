"""Tables of job events and webhooks (revision ``0005_webhooks``), on the job store's metadata.

* ``job_events``: one row per status or stage change of a job, written in the same transaction as
  the change (a transactional outbox). Live followers read them; the webhook sender fans them out
  into deliveries (``dispatched`` marks the ones it has handled).
* ``webhook_endpoints``: a tenant's registered endpoints and the per-job endpoints of jobs
  submitted with a ``webhook_url`` (``job_id`` set), each with its own secret.
* ``webhook_deliveries``: one row per (event, endpoint); its id is the ``webhook-id`` header, the
  same for every attempt, and ``payload`` is the exact body that is signed and sent.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from kiln_service.stores._schema import UTCDateTime, metadata

__all__ = ["job_events", "webhook_deliveries", "webhook_endpoints"]

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("job", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("dispatched", Boolean, nullable=False, server_default=false()),
    Index("ix_job_events_job_id", "job_id", "id"),
    Index("ix_job_events_dispatched", "dispatched", "id"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),
    Column("secret", String(128), nullable=False),
    Column("description", String(256)),
    Column("job_id", String(32)),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_webhook_endpoints_tenant", "tenant", "job_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("event_id", Integer, nullable=False),
    Column("endpoint_id", String(40), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("job_id", String(32), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_until", UTCDateTime()),
    Column("last_response_code", Integer),
    Column("last_error", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at"),
)
