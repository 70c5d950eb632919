"""The job store: the truth about every job, in SQLite (embedded) or PostgreSQL (production).

Used by the API (create, list, cancel, delete, read logs) and by the worker (claim, progress,
logs, finish). All methods take keyword arguments only and return :class:`JobRecord`, a
:class:`kiln_client.models.Job` with the internal fields the service and worker need.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, delete, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kiln_client.models import JobStatus, PlacementSpec, Stage
from kiln_service.errors import (
    DuplicateIdempotencyKeyError,
    JobNotFoundError,
    JobStateError,
    StoreError,
)
from kiln_service.stores._cache import CacheStoreMixin, JobRemoval
from kiln_service.stores._engine import make_engine, normalize_database_url
from kiln_service.stores._events import EventType, record_event, take_changed
from kiln_service.stores._job_queries import JobQueriesMixin
from kiln_service.stores._keys import ApiKeyMixin
from kiln_service.stores._limits import SharedLimitsMixin
from kiln_service.stores._records import TERMINAL, JobRecord, LogLine, new_job_row, row_to_record
from kiln_service.stores._recovery_ops import RecoveryOpsMixin
from kiln_service.stores._schema import job_logs, jobs, utcnow
from kiln_service.stores._worker_ops import WorkerOpsMixin
from kiln_service.stores._workers import WorkerInfo, WorkerRegistryMixin

# normalize_database_url (in _engine) and the record types are re-exported: callers import them
# from here.
__all__ = ["JobRecord", "JobRemoval", "JobStore", "LogLine", "WorkerInfo", "new_job_row",
           "normalize_database_url"]

logger = logging.getLogger(__name__)


class JobStore(JobQueriesMixin, WorkerOpsMixin, WorkerRegistryMixin, RecoveryOpsMixin, ApiKeyMixin,
               SharedLimitsMixin, CacheStoreMixin):
    """Jobs, their logs and the advertised workers over one SQLAlchemy engine.

    Creating, cancelling and deleting jobs are here; the other methods come from one mixin per
    concern (``_job_queries``: listing and reading; ``_worker_ops``, ``_recovery_ops``, …).

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
            engine = make_engine(normalize_database_url(url), pooled=pooled)
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
        row = self._insert_job(values, idempotency_key)
        logger.info("job %s created (target %s, tenant %s)", values["id"], target, tenant)
        return row_to_record(row)

    def _insert_job(self, values: dict[str, Any], idempotency_key: str | None) -> RowMapping:
        """Insert a job row and read it back; a clash on the idempotency key is the client's."""
        try:
            with self.engine.begin() as conn:
                conn.execute(jobs.insert().values(**values))
                return conn.execute(select(jobs).where(jobs.c.id == values["id"])).mappings().one()
        except IntegrityError as exc:
            if idempotency_key is None:
                raise StoreError(f"job store refused the job: {exc}") from exc
            raise DuplicateIdempotencyKeyError(idempotency_key) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"job store unavailable: {type(exc).__name__}: {exc}") from exc

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

    def ping(self) -> None:
        """Run a trivial query against the jobs table.

        Raises:
            StoreError: The database is unreachable or not migrated.
        """
        with self._tx() as conn:
            conn.execute(select(func.count()).select_from(jobs).where(jobs.c.id == ""))
