"""Writing job events inside the job store's transactions, and announcing them after commit.

:func:`record_event` runs in the transaction that changes a job, so an event exists exactly when
the change does (a crash cannot commit one without the other). :func:`mark_changed` notes that a
job changed (an event or new log lines): on PostgreSQL it queues ``NOTIFY kiln_jobs`` (sent by the
server at commit), and the job store calls its ``notifier`` with the changed ids after commit
(Redis pub/sub or the in-process bus, see :mod:`kiln_service.events`).
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import Connection, select, text

from kiln_service.stores._event_schema import job_events
from kiln_service.stores._records import row_to_record
from kiln_service.stores._schema import jobs, utcnow

__all__ = ["CHANNEL", "EventType", "mark_changed", "record_event", "take_changed"]

#: the PostgreSQL NOTIFY channel and Redis pub/sub channel announcing changed job ids
CHANNEL = "kiln_jobs"
_CHANGED = "kiln_changed_jobs"


class EventType(str, enum.Enum):
    """What happened to a job (``job.<status>`` for status changes)."""

    #: back in the queue (after a lost worker or a retried system error)
    QUEUED = "job.queued"
    #: a worker started an attempt
    RUNNING = "job.running"
    #: the stage changed
    STAGE = "job.stage"
    #: progress moved within a stage (live followers only; no webhook)
    PROGRESS = "job.progress"
    #: the job succeeded
    SUCCEEDED = "job.succeeded"
    #: the job failed
    FAILED = "job.failed"
    #: the job was cancelled
    CANCELLED = "job.cancelled"

    @classmethod
    def for_status(cls, status: str) -> EventType:
        """The event of reaching ``status`` (``queued``, ``running``, or a terminal one)."""
        return cls(f"job.{status}")


def record_event(conn: Connection, *, job_id: str, type: EventType | str) -> None:
    """Insert an event holding the job as it is now, in the caller's transaction."""
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one_or_none()
    if row is None:
        return
    record = row_to_record(row)
    snapshot: dict[str, Any] = record.to_public().model_dump(mode="json")
    conn.execute(job_events.insert().values(
        job_id=job_id, tenant=record.tenant, type=EventType(type).value, job=snapshot,
        created_at=utcnow(), dispatched=False))
    mark_changed(conn, job_id)


def mark_changed(conn: Connection, job_id: str) -> None:
    """Note that ``job_id`` changed; followers are woken when the transaction commits."""
    changed: set[str] = conn.info.setdefault(_CHANGED, set())
    if job_id in changed:
        return
    changed.add(job_id)
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :job_id)"),
                     {"channel": CHANNEL, "job_id": job_id})


def take_changed(conn: Connection) -> set[str]:
    """Remove and return the ids :func:`mark_changed` noted on this connection."""
    changed: set[str] = conn.info.pop(_CHANGED, set())
    return changed
