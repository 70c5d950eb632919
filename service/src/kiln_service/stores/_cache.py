"""The compile cache's rows in the job store (table ``compile_cache``, revision 0007).

An entry reuses one finished job's outcome, the *source*: its status, failure, report and the
artifacts of its published attempt, stored once under ``jobs/<source>/attempt-<n>/``. A job
answered from an entry (``jobs.cache_source``) lists the same artifacts and is served from the
source's keys. The source's files are kept while anything refers to them: the source job, a job
answered from it, or its entry; whoever removes the last reference gets the source back from
these methods and deletes its files (``kiln_service.cache``).

Two removals can race (a job deleted while its entry is evicted): each takes a lock per source
before it checks the references (PostgreSQL: a transaction advisory lock; SQLite serialises
writers anyway), so the second to commit sees the first's removal and releases the files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from kiln_client.codes import CACHED_FAILURE_CODES
from kiln_client.models import JobStatus, Stage
from kiln_service._cache_key import entry_key
from kiln_service.errors import DuplicateIdempotencyKeyError, JobStateError, StoreError
from kiln_service.stores._events import EventType, record_event
from kiln_service.stores._records import TERMINAL, JobRecord, row_to_record
from kiln_service.stores._schema import compile_cache, job_logs, jobs, utcnow

__all__ = ["CacheStoreMixin", "JobRemoval"]

logger = logging.getLogger(__name__)


class JobRemoval:
    """What deleting a job leaves to delete from the artifact store."""

    def __init__(self, job: JobRecord, keep_attempt: int | None, released: list[str]) -> None:
        self.job = job
        #: the job's own published attempt, kept because the cache or jobs answered from it use
        #: it (the rest of ``jobs/<id>/`` goes); ``None``: all of ``jobs/<id>/`` goes
        self.keep_attempt = keep_attempt
        #: the source job whose files nothing refers to any more (delete ``jobs/<source>/``)
        self.released = released


class CacheStoreMixin:
    """Methods of :class:`~kiln_service.stores.jobs.JobStore` for the compile cache."""

    def _tx(self) -> AbstractContextManager[Connection]:  # provided by JobStore
        raise NotImplementedError

    def live_toolchains(self, *, target: str, live_within_seconds: float) -> list[dict[str, str]]:
        """The distinct toolchains live workers advertise for ``target`` (none from old workers)."""
        found: dict[str, dict[str, str]] = {}
        for worker in self.list_workers(live_within_seconds=live_within_seconds,  # type: ignore[attr-defined]
                                        target=target):
            toolchain = (worker.toolchains or {}).get(target)
            if toolchain:
                found[repr(sorted(toolchain.items()))] = toolchain
        return list(found.values())

    def create_cached_job(
        self, *, tenant: str, keys: Iterable[str], values: Mapping[str, Any]
    ) -> JobRecord | None:
        """Create a job answered by the first of ``keys`` the tenant's cache holds.

        The entry is marked used and the job is inserted already finished, with the entry's
        outcome, in one transaction; the entry's row lock (taken first) keeps it from being
        evicted meanwhile.

        Args:
            tenant: Whose cache.
            keys: Entry keys (one per live toolchain).
            values: The new job's row (id, fields of the request, ``cache_key``).

        Returns:
            The finished job, or ``None`` on a miss.

        Raises:
            DuplicateIdempotencyKeyError: Another job holds the request's ``Idempotency-Key``.
            StoreError: The database failed.
        """
        now = utcnow()
        try:
            with self._tx() as conn:
                for key in keys:
                    entry = conn.execute(
                        update(compile_cache)
                        .where(compile_cache.c.tenant == tenant, compile_cache.c.key == key)
                        .values(last_used_at=now, hits=compile_cache.c.hits + 1)
                        .returning(*compile_cache.c)).mappings().one_or_none()
                    if entry is not None:
                        return _insert_answered(conn, entry, values, now)
        except IntegrityError as exc:
            if values.get("idempotency_key") is None:
                raise StoreError(f"job store refused the job: {exc}") from exc
            raise DuplicateIdempotencyKeyError(str(values["idempotency_key"])) from exc
        return None

    def remember_outcome(self, *, job_id: str, toolchain: Mapping[str, str]) -> bool:
        """Add a finished job's outcome to its tenant's cache, if it may be reused.

        Kept: succeeded jobs and failures with a deterministic code (``CACHED_FAILURE_CODES``)
        of jobs that used the cache and compiled (not answered from it). The job's row is
        locked first, so a concurrent delete of it either comes before (nothing cached) or sees
        the entry (and keeps the files).

        Args:
            job_id: The finished job.
            toolchain: What the worker that compiled it advertises for the job's target.

        Returns:
            Whether an entry was added (``False`` also when the key already had one).

        Raises:
            StoreError: The database failed.
        """
        with self._tx() as conn:
            row = conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.cache_key.is_not(None),
                                   jobs.c.cache_source.is_(None), jobs.c.status.in_(TERMINAL))
                .values(updated_at=jobs.c.updated_at).returning(*jobs.c)).mappings().one_or_none()
            if row is None or not _reusable(row):
                return False
            key = entry_key(row["cache_key"], toolchain)
            held = conn.execute(select(compile_cache.c.key).where(
                compile_cache.c.tenant == row["tenant"], compile_cache.c.key == key)).first()
            if held is not None:
                return False
            conn.execute(compile_cache.insert().values(
                tenant=row["tenant"], key=key, source_job=job_id,
                source_attempt=row["published_attempt"], status=row["status"],
                failure=row["failure"], artifacts=row["artifacts"], report=row["report"],
                size_bytes=sum(int(a.get("size", 0)) for a in row["artifacts"]),
                created_at=utcnow(), last_used_at=utcnow(), hits=0))
        logger.info("job %s: outcome added to the compile cache of tenant %s", job_id, row["tenant"])
        return True

    def evict_cache(self, *, tenant: str, max_bytes: int) -> list[str]:
        """Remove the tenant's least recently used entries until the rest fit in ``max_bytes``.

        Returns:
            Source jobs nothing refers to any more: the caller deletes ``jobs/<source>/``.

        Raises:
            StoreError: The database failed.
        """
        with self._tx() as conn:
            rows = conn.execute(
                select(compile_cache.c.key, compile_cache.c.size_bytes)
                .where(compile_cache.c.tenant == tenant)
                .order_by(compile_cache.c.last_used_at.desc(), compile_cache.c.created_at.desc())
            ).all()
        total, victims = 0, []
        for key, size in rows:
            total += size
            if total > max_bytes:
                victims.append(key)
        if not victims:
            return []
        return self._drop_entries(and_(compile_cache.c.tenant == tenant,
                                       compile_cache.c.key.in_(victims)))

    def purge_cache(self, *, tenant: str) -> tuple[int, list[str]]:
        """Remove all of a tenant's entries (jobs answered from them keep their artifacts).

        Returns:
            ``(entries removed, source jobs to delete)``.

        Raises:
            StoreError: The database failed.
        """
        with self._tx() as conn:
            count = len(conn.execute(select(compile_cache.c.key)
                                     .where(compile_cache.c.tenant == tenant)).all())
        return count, self._drop_entries(compile_cache.c.tenant == tenant)

    def cache_usage(self, *, tenant: str) -> tuple[int, int]:
        """Return ``(entries, bytes)`` of the tenant's cache."""
        with self._tx() as conn:
            sizes = conn.execute(select(compile_cache.c.size_bytes)
                                 .where(compile_cache.c.tenant == tenant)).scalars().all()
        return len(sizes), int(sum(sizes))

    def remove_job(self, *, job_id: str, tenant: str | None = None) -> JobRemoval:
        """Delete a finished job's row and logs, and say which of its files may go.

        Its own published attempt stays while the cache or jobs answered from it refer to it;
        a job answered from the cache may release its source's files.

        Raises:
            JobNotFoundError: No such job (for that tenant).
            JobStateError: The job is still queued or running.
            StoreError: The database failed.
        """
        job: JobRecord = self.get_job(job_id=job_id, tenant=tenant)  # type: ignore[attr-defined]
        owner = job.artifacts_job
        with self._tx() as conn:
            deleted = conn.execute(delete(jobs).where(jobs.c.id == job_id,
                                                      jobs.c.status.in_(TERMINAL))).rowcount
            if not deleted:
                raise JobStateError(f"job {job_id} is {job.status.value}; cancel it and wait for "
                                    "it to finish before deleting it", code="job_not_finished")
            conn.execute(delete(job_logs).where(job_logs.c.job_id == job_id))
            _lock_sources(conn, [owner])
            in_use = _referenced(conn, owner)
        if owner != job_id:
            return JobRemoval(job, None, [] if in_use else [owner])
        return JobRemoval(job, job.published_attempt if in_use else None, [])

    def _drop_entries(self, where: Any) -> list[str]:
        with self._tx() as conn:
            sources = sorted(set(conn.execute(
                delete(compile_cache).where(where).returning(compile_cache.c.source_job)
            ).scalars().all()))
            _lock_sources(conn, sources)
            return [s for s in sources if not _referenced(conn, s)]


def _insert_answered(conn: Connection, entry: Mapping[Any, Any], values: Mapping[str, Any],
                     now: Any) -> JobRecord:
    status = entry["status"]
    row = {
        **values, "status": status, "stage": Stage.DONE.value,
        "stage_message": f"answered from the compile cache (job {entry['source_job']})",
        "progress": 1.0 if status == JobStatus.SUCCEEDED.value else 0.0,
        "created_at": now, "updated_at": now, "started_at": None, "finished_at": now,
        "attempts": 0, "failure": entry["failure"], "artifacts": entry["artifacts"],
        "report": entry["report"], "published_attempt": entry["source_attempt"],
        "cache_source": entry["source_job"], "cancel_requested": False, "fence": 0,
        "log_seq": 0,
    }
    conn.execute(jobs.insert().values(**row))
    record_event(conn, job_id=row["id"], type=EventType.for_status(status))
    return row_to_record(conn.execute(select(jobs).where(jobs.c.id == row["id"])).mappings().one())


def _reusable(row: Mapping[Any, Any]) -> bool:
    if row["published_attempt"] is None:
        return False
    if row["status"] == JobStatus.SUCCEEDED.value:
        return True
    failure = row["failure"] or {}
    return row["status"] == JobStatus.FAILED.value and failure.get("code") in {
        c.value for c in CACHED_FAILURE_CODES}


def _lock_sources(conn: Connection, sources: list[str]) -> None:
    """Serialise the reference checks of these sources with other transactions' (PostgreSQL)."""
    if conn.dialect.name != "postgresql":
        return  # SQLite: the transaction already holds the database's write lock
    for source in sorted(sources):
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": f"kiln-cache:{source}"})


def _referenced(conn: Connection, source: str) -> bool:
    """Whether a job or a cache entry still refers to ``source``'s files."""
    by_job = exists().where(or_(jobs.c.id == source, jobs.c.cache_source == source))
    by_entry = exists().where(compile_cache.c.source_job == source)
    return bool(conn.execute(select(or_(by_job, by_entry))).scalar())

