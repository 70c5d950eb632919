"""The job store: the truth about every job, in SQLite (embedded) or PostgreSQL (production).

Used by the API (create, list, cancel, delete, read logs) and by the worker (claim, progress,
logs, finish). All methods take keyword arguments only and return :class:`JobRecord`, a
:class:`kiln_client.models.Job` with the internal fields the service and worker need.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from kiln_client.models import Job, JobList, JobStatus, PlacementSpec, Stage
from kiln_service.errors import (
    BadRequestError,
    DuplicateIdempotencyKeyError,
    JobNotFoundError,
    JobStateError,
    StoreError,
)
from kiln_service.stores._cache import CacheStoreMixin, JobRemoval
from kiln_service.stores._events import EventType, record_event, take_changed
from kiln_service.stores._keys import ApiKeyMixin
from kiln_service.stores._limits import SharedLimitsMixin
from kiln_service.stores._records import JobRecord, LogLine, new_job_row, row_to_record
from kiln_service.stores._recovery_ops import RecoveryOpsMixin
from kiln_service.stores._schema import job_logs, jobs, utcnow
from kiln_service.stores._worker_ops import WorkerOpsMixin
from kiln_service.stores._workers import WorkerInfo, WorkerRegistryMixin

__all__ = ["JobRecord", "JobRemoval", "JobStore", "LogLine", "WorkerInfo", "new_job_row",
           "normalize_database_url"]

logger = logging.getLogger(__name__)
TERMINAL = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)


def normalize_database_url(url: str) -> str:
    """Map ``postgresql://``/``postgres://`` to the psycopg 3 driver, which is the one installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class JobStore(WorkerOpsMixin, WorkerRegistryMixin, RecoveryOpsMixin, ApiKeyMixin,
               SharedLimitsMixin, CacheStoreMixin):
    """Jobs, their logs and the advertised workers over one SQLAlchemy engine.

    Args:
        url: A SQLAlchemy URL: ``sqlite:///path/kiln.db`` or ``postgresql+psycopg://…``.
        engine: An engine to use instead of ``url`` (tests).
        pooled: Keep PostgreSQL connections in a pool; ``False`` opens one per use (for a
            process that forks, such as the Celery worker's main process).
    """

    def __init__(
        self, url: str | None = None, *, engine: Engine | None = None, pooled: bool = True
    ) -> None:
        if engine is None:
            if url is None:
                raise ValueError("JobStore needs a database url or an engine")
            engine = _make_engine(normalize_database_url(url), pooled=pooled)
        self.engine = engine
        #: called with the ids of jobs that changed, after each commit that changed any
        self.notifier: Callable[[set[str]], None] | None = None

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        changed: set[str] = set()
        try:
            with self.engine.begin() as conn:
                take_changed(conn)  # nothing left over from an aborted use of this connection
                yield conn
                changed = take_changed(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"job store unavailable: {type(exc).__name__}: {exc}") from exc
        if changed and self.notifier is not None:
            self.notifier(changed)

    # -- API side ---------------------------------------------------------------------------

    def create_job(
        self,
        *,
        target: str,
        timeout_seconds: int,
        input_digests: Mapping[str, str],
        job_id: str | None = None,
        tenant: str = "default",
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        flags: str = "",
        signature: str = "serving_default",
        placement: PlacementSpec | None = None,
        input_shapes: Mapping[str, list[int]] | None = None,
        idempotency_key: str | None = None,
        request_sha256: str | None = None,
        stage_message: str | None = None,
        pipeline: Mapping[str, Any] | None = None,
        cache_key: str | None = None,
    ) -> JobRecord:
        """Insert a new ``queued`` job and return it.

        Args:
            target: Compilation target (``xla``, ``inf1``).
            timeout_seconds: Compile time limit.
            input_digests: sha256 of each stored upload (``model``, ``example_inputs``).
            job_id: The id to use (the caller already stored uploads under it); new when omitted.
            tenant: Owner of the job.
            name: Human-friendly name.
            labels: Key/value labels.
            flags: The ``NEURON_CC_FLAGS`` string.
            signature: SavedModel signature to compile.
            placement: Placement spec, if any.
            input_shapes: Shapes for generated inputs, if any.
            idempotency_key: Client's ``Idempotency-Key`` (unique per tenant), if any.
            request_sha256: Digest of the request, to tell a replay from a different body.
            stage_message: Initial stage message (why the job may wait), if any.
            pipeline: ``model_source``, ``output_location``, ``mlflow_register``, if any.
            cache_key: The request's compile cache key (``None``: the cache is not used).

        Returns:
            The stored job.

        Raises:
            StoreError: The database failed.
        """
        values = new_job_row(
            job_id=job_id or uuid.uuid4().hex, tenant=tenant, target=target,
            timeout_seconds=timeout_seconds, input_digests=input_digests, name=name,
            labels=labels, flags=flags, signature=signature, placement=placement,
            input_shapes=input_shapes, idempotency_key=idempotency_key,
            request_sha256=request_sha256, stage_message=stage_message, cache_key=cache_key,
            pipeline=pipeline)
        try:
            with self.engine.begin() as conn:
                conn.execute(jobs.insert().values(**values))
                row = conn.execute(select(jobs).where(jobs.c.id == values["id"])).mappings().one()
        except IntegrityError as exc:
            if idempotency_key is None:
                raise StoreError(f"job store refused the job: {exc}") from exc
            raise DuplicateIdempotencyKeyError(idempotency_key) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"job store unavailable: {type(exc).__name__}: {exc}") from exc
        logger.info("job %s created (target %s, tenant %s)", values["id"], target, tenant)
        return row_to_record(row)

    def find_idempotent(self, *, tenant: str, key: str) -> tuple[JobRecord, str | None] | None:
        """Return the job created with ``Idempotency-Key`` ``key`` and its request digest.

        Args:
            tenant: Owner of the key (keys are unique per tenant).
            key: The client's ``Idempotency-Key``.

        Returns:
            ``(job, request_sha256)``, or ``None`` when no job holds the key.

        Raises:
            StoreError: The database failed.
        """
        query = select(jobs).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key)
        with self._tx() as conn:
            row = conn.execute(query).mappings().one_or_none()
        return None if row is None else (row_to_record(row), row["request_sha256"])

    def get_job(self, *, job_id: str, tenant: str | None = None) -> JobRecord:
        """Return one job.

        Args:
            job_id: The job id.
            tenant: When given, a job of another tenant is reported missing.

        Returns:
            The job.

        Raises:
            JobNotFoundError: No such job (for that tenant).
            StoreError: The database failed.
        """
        query = select(jobs).where(jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        with self._tx() as conn:
            row = conn.execute(query).mappings().one_or_none()
        if row is None:
            raise JobNotFoundError(job_id)
        return row_to_record(row)

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
        conds = []
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
        query = (select(jobs).where(*conds)
                 .order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1))
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        items = [row_to_record(r).to_public() for r in rows[:limit]]
        next_cursor = _encode_cursor(items[-1]) if len(rows) > limit else None
        return JobList(items=items, next_cursor=next_cursor)

    def request_cancel(self, *, job_id: str, tenant: str | None = None) -> JobRecord:
        """Cancel a job: a queued one at once, a running one by asking its worker to stop.

        Args:
            job_id: The job id.
            tenant: When given, the job must belong to it.

        Returns:
            The job after the change (``cancelled``, or ``running`` with ``cancel_requested``).

        Raises:
            JobNotFoundError: No such job.
            JobStateError: The job has already finished.
            StoreError: The database failed.
        """
        now = utcnow()
        with self._tx() as conn:
            done = conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.CANCELLED.value, stage=Stage.DONE.value,
                        stage_message="cancelled before it started", finished_at=now,
                        updated_at=now, cancel_requested=True)
            ).rowcount
            if done:
                record_event(conn, job_id=job_id, type=EventType.CANCELLED)
            if not done:
                conn.execute(
                    update(jobs).where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
                    .values(cancel_requested=True, updated_at=now, stage_message="cancel requested")
                )
        job = self.get_job(job_id=job_id, tenant=tenant)
        if job.status.is_terminal and not (done and job.status is JobStatus.CANCELLED):
            raise JobStateError(f"job {job_id} has already finished ({job.status.value}); "
                                "there is nothing to cancel", code="job_finished")
        return job

    def delete_job(
        self, *, job_id: str, tenant: str | None = None, only_finished: bool = True
    ) -> JobRecord:
        """Delete a finished job and its logs (the caller removes its artifacts).

        Args:
            job_id: The job id.
            tenant: When given, the job must belong to it.
            only_finished: Refuse unless the job is terminal. ``False`` is for rolling back a
                submission that could not be queued.

        Returns:
            The job as it was before deletion.

        Raises:
            JobNotFoundError: No such job.
            JobStateError: The job is still queued or running; cancel it first.
            StoreError: The database failed.
        """
        job = self.get_job(job_id=job_id, tenant=tenant)
        with self._tx() as conn:
            conn.execute(delete(job_logs).where(job_logs.c.job_id == job_id))
            query = delete(jobs).where(jobs.c.id == job_id)
            if only_finished:
                query = query.where(jobs.c.status.in_(TERMINAL))
            deleted = conn.execute(query).rowcount
            if not deleted:
                raise JobStateError(f"job {job_id} is {job.status.value}; cancel it and wait for "
                                    "it to finish before deleting it", code="job_not_finished")
        return job

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

    def ping(self) -> None:
        """Run a trivial query against the jobs table.

        Raises:
            StoreError: The database is unreachable or not migrated.
        """
        with self._tx() as conn:
            conn.execute(select(func.count()).select_from(jobs).where(jobs.c.id == ""))


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


def _make_engine(url: str, *, pooled: bool = True) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # One connection per use: SQLite files are cheap to open and this avoids sharing
        # connections between the API's threads.
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if not pooled:
        return create_engine(url, poolclass=NullPool)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()

