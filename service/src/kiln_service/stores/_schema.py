"""SQL schema of the job store (SQLAlchemy Core tables, shared by the store and migrations).

Columns for the reliability and security work are here already: ``tenant`` scopes every job,
``lease_expires_at``/``heartbeat_at``/``fence`` let a reconciler recover lost attempts and refuse
stale ones, ``published_attempt`` names the one attempt whose artifacts a job serves,
``idempotency_key``/``request_sha256`` back ``Idempotency-Key`` replays.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)

__all__ = ["UTCDateTime", "compile_cache", "job_logs", "jobs", "metadata", "utcnow", "workers"]

metadata = MetaData()


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and read back timezone-aware.

    SQLite has no time zones; storing naive UTC everywhere keeps ordering and comparisons the
    same on both databases.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return value.replace(tzinfo=timezone.utc)


jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False, server_default="default"),
    Column("name", String(256)),
    Column("labels", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("stage_message", Text),
    Column("progress", Float, nullable=False, server_default="0"),
    Column("target", String(32), nullable=False),
    Column("flags", Text, nullable=False, server_default=""),
    Column("signature", String(256), nullable=False),
    Column("placement", JSON),
    Column("input_shapes", JSON),
    Column("timeout_seconds", Integer, nullable=False),
    Column("input_digests", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("failure", JSON),
    Column("artifacts", JSON, nullable=False),
    # The attempt (fence) whose outputs ``artifacts`` lists, under jobs/<id>/attempt-<n>/; set in
    # the same fenced UPDATE that finishes the job. NULL: nothing published, or a job finished
    # before attempts had keys of their own (its files are at jobs/<id>/<name>).
    Column("published_attempt", Integer),
    Column("report", JSON),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("worker_id", String(256)),
    Column("fence", Integer, nullable=False, server_default="0"),
    Column("heartbeat_at", UTCDateTime()),
    Column("lease_expires_at", UTCDateTime()),
    Column("log_seq", Integer, nullable=False, server_default="0"),
    Column("idempotency_key", String(256)),
    Column("request_sha256", String(64)),
    # Where the model came from and where the outputs also go (model_source, output_location,
    # mlflow_register) and what became of those exports; NULL for a plain upload.
    Column("pipeline", JSON),
    # The compile cache (revision 0008_compile_cache): the job's cache key (NULL: the cache was
    # not used), and for a job answered from the cache, the job whose published attempt holds
    # its artifacts (the files stay under that job's keys; see kiln_service.cache).
    Column("cache_key", String(64)),
    Column("cache_source", String(32)),
    UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
    Index("ix_jobs_status", "status"),
    Index("ix_jobs_cache_source", "cache_source"),
)

job_logs = Table(
    "job_logs",
    metadata,
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("line", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

#: One row per running ``kiln-worker`` (its Celery node name), refreshed every few seconds; a
#: worker is live while ``last_seen_at`` is recent (see ``Settings.worker_liveness_seconds``).
workers = Table(
    "workers",
    metadata,
    Column("id", String(256), primary_key=True),
    Column("targets", JSON, nullable=False),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("sandbox", String(32)),
    # Per target, the versions that make its compiles (Kiln, TensorFlow, backend): part of the
    # compile cache's key. NULL for workers of older versions.
    Column("toolchains", JSON),
    Index("ix_workers_last_seen_at", "last_seen_at"),
)

#: The compile cache (revision ``0008_compile_cache``): one row per (tenant, key) whose outcome
#: is reused. ``source_job`` compiled it; its published attempt's files
#: (``jobs/<source_job>/attempt-<source_attempt>/``) are the artifacts of every job answered
#: from the entry, and stay stored while the entry or any such job exists.
compile_cache = Table(
    "compile_cache",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("source_job", String(32), nullable=False),
    Column("source_attempt", Integer),
    Column("status", String(16), nullable=False),
    Column("failure", JSON),
    Column("artifacts", JSON, nullable=False),
    Column("report", JSON),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_used_at", UTCDateTime(), nullable=False),
    Column("hits", Integer, nullable=False, server_default="0"),
    Index("ix_compile_cache_lru", "tenant", "last_used_at"),
    Index("ix_compile_cache_source", "source_job"),
)
