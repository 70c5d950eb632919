"""Read-side queries of the job store: pages of jobs, log lines, counts for the metrics."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, func, or_, select

from kiln_client.models import Job, JobList
from kiln_service.errors import BadRequestError
from kiln_service.stores._records import JobRecord, LogLine, row_to_record
from kiln_service.stores._schema import job_logs, jobs

__all__ = ["JobQueriesMixin"]


class JobQueriesMixin:
    """Methods of :class:`~kiln_service.stores.jobs.JobStore` that read jobs and logs."""

    def _tx(self) -> AbstractContextManager[Connection]:  # provided by JobStore
        raise NotImplementedError

    def list_jobs(
        self,
        *,
        tenant: str | None = None,
        status: Sequence[str] | None = None,
        target: str | None = None,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobList:
        """Return one page of jobs, newest first.

        Args:
            tenant: Only this tenant's jobs.
            status: Only jobs in one of these statuses.
            target: Only jobs of this target.
            labels: Only jobs carrying all of these labels.
            name: Only jobs of exactly this name.
            limit: Page size (1 to 500).
            cursor: ``next_cursor`` of the previous page.

        Returns:
            The page, with ``next_cursor`` set when more jobs follow.

        Raises:
            BadRequestError: The cursor is not one this store issued.
            StoreError: The database failed.
        """
        limit = max(1, min(limit, 500))
        conds = _job_filters(tenant=tenant, status=status, target=target, labels=labels,
                             name=name, cursor=cursor)
        query = (select(jobs).where(*conds)
                 .order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1))
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        items = [row_to_record(r).to_public() for r in rows[:limit]]
        next_cursor = _encode_cursor(items[-1]) if len(rows) > limit else None
        return JobList(items=items, next_cursor=next_cursor)

    def read_logs(self, *, job_id: str, after_seq: int = 0, limit: int | None = None) -> list[LogLine]:
        """Return log lines with ``seq > after_seq``, in order.

        Args:
            job_id: The job id.
            after_seq: Last sequence number already seen (0 for all).
            limit: Most lines to return.

        Returns:
            The lines.
        """
        query = (select(job_logs.c.seq, job_logs.c.line)
                 .where(job_logs.c.job_id == job_id, job_logs.c.seq > after_seq)
                 .order_by(job_logs.c.seq))
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            return [LogLine(r.seq, r.line) for r in conn.execute(query)]

    def count_by_status(self) -> dict[str, int]:
        """Return how many jobs are in each status (for the queue-depth gauge)."""
        with self._tx() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
            return {status: count for status, count in rows}

    def list_finished_since(self, *, since: datetime, limit: int = 1000) -> list[JobRecord]:
        """Return jobs that reached a terminal status after ``since``, oldest first (for metrics).

        Args:
            since: Exclusive lower bound on ``finished_at``.
            limit: Most jobs to return.

        Returns:
            The jobs.
        """
        query = (select(jobs).where(jobs.c.finished_at > since)
                 .order_by(jobs.c.finished_at, jobs.c.id).limit(limit))
        with self._tx() as conn:
            return [row_to_record(r) for r in conn.execute(query).mappings()]


def _job_filters(
    *, tenant: str | None, status: Sequence[str] | None, target: str | None,
    labels: Mapping[str, str] | None, name: str | None, cursor: str | None,
) -> list[ColumnElement[bool]]:
    """The ``WHERE`` conditions of :meth:`JobQueriesMixin.list_jobs` (all must hold)."""
    conds: list[ColumnElement[bool]] = []
    if tenant is not None:
        conds.append(jobs.c.tenant == tenant)
    if status:
        conds.append(jobs.c.status.in_(list(status)))
    if target is not None:
        conds.append(jobs.c.target == target)
    if name is not None:
        conds.append(jobs.c.name == name)
    for key, value in (labels or {}).items():
        conds.append(jobs.c.labels[key].as_string() == value)
    if cursor:
        created_at, last_id = _decode_cursor(cursor)
        conds.append(or_(jobs.c.created_at < created_at,
                         and_(jobs.c.created_at == created_at, jobs.c.id < last_id)))
    return conds


def _encode_cursor(job: Job) -> str:
    raw = json.dumps({"c": job.created_at.isoformat(), "i": job.id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        return datetime.fromisoformat(data["c"]), str(data["i"])
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise BadRequestError("invalid cursor; pass the next_cursor of a previous page",
                              code="invalid_cursor") from exc
