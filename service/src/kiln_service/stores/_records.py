"""Row types of the job store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from kiln_client.models import Job

__all__ = ["JobRecord", "LogLine", "row_to_record"]


class JobRecord(Job):
    """A job row: the public :class:`Job` plus fields only Kiln itself sees."""

    tenant: str = "default"
    """Owner of the job; every read is scoped to it."""
    cancel_requested: bool = False
    """Set when a running job is asked to stop; the worker kills the compile."""
    worker_id: str | None = None
    """The worker holding the latest attempt."""
    fence: int = 0
    """Fencing number of the latest attempt; a finish with an older number is refused."""
    lease_expires_at: datetime | None = None
    """When the current attempt's lease lapses unless renewed by :meth:`JobStore.heartbeat`."""
    published_attempt: int | None = None
    """The attempt whose outputs ``artifacts`` lists (keys ``jobs/<id>/attempt-<n>/``); ``None``
    when nothing was published, or for a job published before attempts had keys of their own."""

    def to_public(self) -> Job:
        """Return the job as the API shows it (without internal fields)."""
        return Job.model_validate(self.model_dump(include=set(Job.model_fields)))


class LogLine(NamedTuple):
    """One line of a job's compile log; ``seq`` counts from 1."""

    seq: int
    line: str


def row_to_record(row: Mapping[Any, Any]) -> JobRecord:
    """Build a :class:`JobRecord` from a ``jobs`` row mapping."""
    data = dict(row)
    for key in ("idempotency_key", "request_sha256", "updated_at", "heartbeat_at", "log_seq"):
        data.pop(key, None)
    data.update(data.pop("pipeline", None) or {})
    return JobRecord.model_validate(data)
