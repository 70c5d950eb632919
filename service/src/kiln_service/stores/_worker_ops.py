"""The worker's side of the job store: claim, progress, logs, heartbeat, finish.

Every write after the claim may carry the attempt's ``fence`` (returned by
:meth:`WorkerOpsMixin.claim_job`); a write whose fence is older than the job's current one comes
from a stale attempt and is refused, so a duplicate run can never publish.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, select, update

from kiln_client.models import Artifact, Failure, JobStatus, Stage
from kiln_service.stores._events import EventType, mark_changed, record_event
from kiln_service.stores._records import JobRecord, row_to_record
from kiln_service.stores._schema import job_logs, jobs, utcnow

__all__ = ["WorkerOpsMixin"]

logger = logging.getLogger(__name__)
DEFAULT_LEASE_SECONDS = 60


class WorkerOpsMixin:
    """Methods of :class:`~kiln_service.stores.jobs.JobStore` used by workers."""

    def _tx(self) -> AbstractContextManager[Connection]:  # provided by JobStore
        raise NotImplementedError

    def claim_job(
        self, *, job_id: str, worker_id: str, lease_seconds: int = DEFAULT_LEASE_SECONDS
    ) -> JobRecord | None:
        """Atomically move a job from ``queued`` to ``running`` for this worker.

        Increments ``attempts`` and ``fence``, sets ``started_at``, the worker id, stage
        ``preparing`` and a lease. Does nothing when the job is not queued (already claimed,
        cancelled, finished or deleted), so a redelivered message is harmless.

        Args:
            job_id: The job id from the task message.
            worker_id: Who runs it (host name and pid, say).
            lease_seconds: Lease length; renew it with :meth:`heartbeat`.

        Returns:
            The running job (its ``fence`` identifies this attempt), or ``None`` if not claimable.

        Raises:
            StoreError: The database failed.
        """
        now = utcnow()
        with self._tx() as conn:
            claimed = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value,
                       jobs.c.cancel_requested.is_(False))
                .values(status=JobStatus.RUNNING.value, stage=Stage.PREPARING.value,
                        stage_message="fetching the upload", progress=0.0,
                        attempts=jobs.c.attempts + 1, fence=jobs.c.fence + 1,
                        started_at=now, updated_at=now, heartbeat_at=now, worker_id=worker_id,
                        lease_expires_at=now + timedelta(seconds=lease_seconds))
            ).rowcount
            if not claimed:
                logger.info("job %s not claimable by %s (not queued)", job_id, worker_id)
                return None
            record_event(conn, job_id=job_id, type=EventType.RUNNING)
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
        logger.info("job %s claimed by %s (attempt %s)", job_id, worker_id, row["attempts"])
        return row_to_record(row)

    def update_progress(
        self, *, job_id: str, stage: Stage | str, progress: float,
        message: str | None = None, fence: int | None = None,
    ) -> bool:
        """Record the stage and progress of a running job (also renews nothing; see heartbeat).

        Args:
            job_id: The job id.
            stage: The current :class:`Stage`.
            progress: Overall progress, clamped to 0.0 to 1.0.
            message: Detail such as ``compiling subgraph 2 of 5``.
            fence: The attempt's fence; the update is refused when it is stale.

        Returns:
            ``True`` if recorded, ``False`` if the job is no longer running (or the fence is stale).
        """
        values: dict[str, Any] = {
            "stage": Stage(stage).value, "progress": min(max(float(progress), 0.0), 1.0),
            "updated_at": utcnow(),
        }
        if message is not None:
            values["stage_message"] = message
        with self._tx() as conn:
            before = conn.execute(select(jobs.c.stage, jobs.c.progress, jobs.c.stage_message)
                                  .where(jobs.c.id == job_id)).one_or_none()
            done = bool(conn.execute(
                update(jobs).where(*self._running(job_id, fence)).values(**values)
            ).rowcount)
            if done and before is not None:
                _record_progress(conn, job_id, tuple(before), values)
            return done

    def append_logs(self, *, job_id: str, lines: Sequence[str] | str) -> int:
        """Append lines to a job's log, numbering them after the last one.

        Args:
            job_id: The job id.
            lines: One line or several (trailing newlines are stripped).

        Returns:
            The sequence number of the last line written (0 if there was nothing to write).
        """
        items = [lines] if isinstance(lines, str) else list(lines)
        items = [line.rstrip("\r\n") for line in items]
        if not items:
            return 0
        now = utcnow()
        with self._tx() as conn:
            # Reserve the numbers with one atomic UPDATE so concurrent writers never collide.
            last = conn.execute(
                update(jobs).where(jobs.c.id == job_id)
                .values(log_seq=jobs.c.log_seq + len(items)).returning(jobs.c.log_seq)
            ).scalar_one_or_none()
            if last is None:
                return 0
            first = last - len(items) + 1
            conn.execute(job_logs.insert(), [
                {"job_id": job_id, "seq": first + i, "line": line, "created_at": now}
                for i, line in enumerate(items)
            ])
            mark_changed(conn, job_id)
        return int(last)

    def heartbeat(self, *, job_id: str, fence: int, lease_seconds: int = DEFAULT_LEASE_SECONDS) -> bool:
        """Renew the lease of a running attempt.

        Args:
            job_id: The job id.
            fence: The attempt's fence.
            lease_seconds: New lease length from now.

        Returns:
            ``False`` when the attempt is stale or the job is no longer running: stop working.
        """
        now = utcnow()
        with self._tx() as conn:
            return bool(conn.execute(
                update(jobs).where(*self._running(job_id, fence))
                .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
            ).rowcount)

    def is_cancel_requested(self, *, job_id: str) -> bool:
        """Return whether the job's owner asked to cancel it (``True`` also if it is gone)."""
        with self._tx() as conn:
            value = conn.execute(
                select(jobs.c.cancel_requested).where(jobs.c.id == job_id)
            ).scalar_one_or_none()
        return True if value is None else bool(value)

    def finish_job(
        self, *, job_id: str, status: JobStatus | str, failure: Failure | None = None,
        artifacts: Sequence[Artifact] = (), report: Mapping[str, Any] | None = None,
        fence: int | None = None,
    ) -> JobRecord | None:
        """Move a running job to a terminal status with its outcome.

        Args:
            job_id: The job id.
            status: ``succeeded``, ``failed`` or ``cancelled``.
            failure: Why it failed (required for ``failed``).
            artifacts: The stored artifacts (already durable in the artifact store, under the
                attempt's own keys ``jobs/<id>/attempt-<fence>/``).
            report: Summary of the report, for ``Job.report``.
            fence: The attempt's fence; a stale attempt cannot finish the job. The same
                ``UPDATE`` publishes this attempt's artifacts (``published_attempt``), so
                exactly one attempt's files are ever served.

        Returns:
            The finished job, or ``None`` if it was not running (or the fence is stale).

        Raises:
            ValueError: ``status`` is not terminal, or ``failed`` without a failure.
        """
        status = JobStatus(status)
        values = _finished_row(status, failure, artifacts, report, fence)
        with self._tx() as conn:
            done = conn.execute(
                update(jobs).where(*self._running(job_id, fence)).values(**values)
            ).rowcount
            if not done:
                logger.warning("job %s: finish as %s refused (not running or stale fence %s)",
                               job_id, status.value, fence)
                return None
            record_event(conn, job_id=job_id, type=EventType.for_status(status.value))
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
        logger.info("job %s finished: %s", job_id, status.value)
        return row_to_record(row)

    @staticmethod
    def _running(job_id: str, fence: int | None) -> Iterator[ColumnElement[bool]]:
        yield jobs.c.id == job_id
        yield jobs.c.status == JobStatus.RUNNING.value
        if fence is not None:
            yield jobs.c.fence == fence


def _record_progress(conn: Connection, job_id: str, before: tuple[Any, ...],
                     values: Mapping[str, Any]) -> None:
    """Record a stage event (stage changed) or a progress event (progress or message moved)."""
    stage, progress, message = before
    if stage != values["stage"]:
        record_event(conn, job_id=job_id, type=EventType.STAGE)
    elif progress != values["progress"] or values.get("stage_message", message) != message:
        record_event(conn, job_id=job_id, type=EventType.PROGRESS)


def _finished_row(status: JobStatus, failure: Failure | None, artifacts: Sequence[Artifact],
                  report: Mapping[str, Any] | None, fence: int | None) -> dict[str, Any]:
    """The column values of a job finishing with ``status`` (see ``finish_job``).

    Raises:
        ValueError: ``status`` is not terminal, or ``failed`` without a failure.
    """
    if not status.is_terminal:
        raise ValueError(f"finish_job needs a terminal status, not {status.value}")
    if status is JobStatus.FAILED and failure is None:
        raise ValueError("a failed job needs a failure reason")
    now = utcnow()
    values: dict[str, Any] = {
        "status": status.value, "stage": Stage.DONE.value, "finished_at": now,
        "updated_at": now, "lease_expires_at": None,
        "failure": failure.model_dump(mode="json") if failure is not None else None,
        "artifacts": [a.model_dump(mode="json") for a in artifacts],
        "report": dict(report) if report is not None else None,
        "published_attempt": fence,
    }
    if status is JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    return values
