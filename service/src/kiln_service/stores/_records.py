"""Row types of the job store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from kiln_client.models import Job, JobStatus, PlacementSpec, Stage
from kiln_service.stores._schema import utcnow

#: the statuses a job ends in, as stored
TERMINAL = tuple(status.value for status in JobStatus if status.is_terminal)

__all__ = ["TERMINAL", "JobRecord", "LogLine", "new_job_row", "row_to_record"]


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
    cache_key: str | None = None
    """The job's compile cache key; ``None`` when the cache was not used."""
    cache_source: str | None = None
    """For a job answered from the cache, the job whose attempt ``published_attempt`` holds the
    artifacts (``jobs/<cache_source>/attempt-<n>/``)."""

    @property
    def artifacts_job(self) -> str:
        """The job under whose keys this job's artifacts are stored."""
        return self.cache_source or self.id

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
    if data.get("cache_key") is not None:
        data["cache"] = {"hit": data.get("cache_source") is not None, "job": data.get("cache_source")}
    for key in ("idempotency_key", "request_sha256", "updated_at", "heartbeat_at", "log_seq"):
        data.pop(key, None)
    data.update(data.pop("pipeline", None) or {})
    return JobRecord.model_validate(data)


def new_job_row(
    *, job_id: str, tenant: str, target: str, timeout_seconds: int,
    input_digests: Mapping[str, str], name: str | None = None,
    labels: Mapping[str, str] | None = None, flags: str = "", signature: str = "serving_default",
    placement: PlacementSpec | None = None, input_shapes: Mapping[str, list[int]] | None = None,
    idempotency_key: str | None = None, request_sha256: str | None = None,
    stage_message: str | None = None, cache_key: str | None = None,
    pipeline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``jobs`` row of a new ``queued`` job (see :meth:`JobStore.create_job` for the fields)."""
    now = utcnow()
    return {
        "id": job_id, "tenant": tenant, "name": name,
        "labels": dict(labels or {}), "status": JobStatus.QUEUED.value,
        "stage": Stage.QUEUED.value, "stage_message": stage_message, "progress": 0.0,
        "target": target, "flags": flags, "signature": signature,
        "placement": placement.model_dump() if placement is not None else None,
        "input_shapes": dict(input_shapes) if input_shapes is not None else None,
        "timeout_seconds": timeout_seconds, "input_digests": dict(input_digests),
        "created_at": now, "updated_at": now, "attempts": 0, "artifacts": [],
        "cancel_requested": False, "fence": 0, "log_seq": 0,
        "idempotency_key": idempotency_key, "request_sha256": request_sha256,
        "cache_key": cache_key, "pipeline": dict(pipeline) if pipeline else None,
    }
