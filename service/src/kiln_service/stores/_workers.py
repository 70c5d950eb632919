"""Worker advertisement in the job store: which ``kiln-worker`` processes run, and for what.

Each worker registers its Celery node name and targets when it is ready, refreshes
``last_seen_at`` every few seconds and removes its row when it stops. A worker is *live* while
``last_seen_at`` is within the liveness window; a killed worker simply stops being live.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import Connection, delete, select, update

from kiln_service.stores._schema import utcnow, workers

__all__ = ["WorkerInfo", "WorkerList", "WorkerRegistryMixin", "unserved_target_message"]

logger = logging.getLogger(__name__)
#: rows of workers unseen for this long are removed when another worker registers
PRUNE_AFTER = timedelta(days=1)


class WorkerInfo(BaseModel):
    """One advertised worker."""

    id: str
    """Celery node name, such as ``kiln-xla@host-1``."""
    targets: list[str]
    """Targets whose queues it consumes."""
    host: str
    pid: int
    version: str
    """``kiln-worker`` package version."""
    started_at: datetime
    last_seen_at: datetime
    sandbox: str | None = None
    """How it isolates compiles: ``bubblewrap``, or ``none`` when its operator allowed running
    them without isolation (``KILN_WORKER_SANDBOX``); empty for workers of older versions."""
    toolchains: dict[str, dict[str, str]] | None = None
    """Per target, the versions its compiles are made with (``kiln-worker``, ``tensorflow``,
    ``tf-keras``, the backend's); part of the compile cache's key. Empty for older workers."""


class WorkerList(BaseModel):
    """``GET /v1/workers``: the live workers."""

    items: list[WorkerInfo]
    liveness_seconds: float
    """A worker is listed while it was seen within this many seconds."""


def unserved_target_message(target: str) -> str:
    """The stage message of a queued job whose target no live worker serves.

    Args:
        target: The job's target.

    Returns:
        A sentence saying what the job waits for and how to start such a worker.
    """
    return (f"waiting for a worker that serves target '{target}': none is live; "
            f"start one with `kiln-worker --targets {target}`")


class WorkerRegistryMixin:
    """Methods of :class:`~kiln_service.stores.jobs.JobStore` about workers."""

    def _tx(self) -> AbstractContextManager[Connection]:  # provided by JobStore
        raise NotImplementedError

    def register_worker(
        self, *, worker_id: str, targets: Sequence[str], host: str, pid: int, version: str,
        sandbox: str | None = None, toolchains: Mapping[str, Mapping[str, str]] | None = None,
    ) -> WorkerInfo:
        """Insert or replace this worker's row, seen now.

        Args:
            worker_id: Celery node name (unique per running worker).
            targets: Targets it serves.
            host: Host name.
            pid: Process id of the worker's main process.
            version: ``kiln-worker`` version.
            sandbox: Its compile isolation (``bubblewrap`` or ``none``).
            toolchains: Per target, the versions its compiles are made with.

        Returns:
            The stored row.

        Raises:
            StoreError: The database failed (or is not migrated).
        """
        now = utcnow()
        row = {"id": worker_id, "targets": list(targets), "host": host, "pid": pid,
               "version": version, "started_at": now, "last_seen_at": now, "sandbox": sandbox,
               "toolchains": ({t: dict(v) for t, v in toolchains.items()}
                              if toolchains is not None else None)}
        with self._tx() as conn:
            # Delete-then-insert is an upsert both SQLite and PostgreSQL run the same way.
            conn.execute(delete(workers).where(
                (workers.c.id == worker_id) | (workers.c.last_seen_at < now - PRUNE_AFTER)))
            conn.execute(workers.insert().values(**row))
        logger.info("worker %s registered (targets %s)", worker_id, ",".join(targets))
        return WorkerInfo.model_validate(row)

    def touch_worker(self, *, worker_id: str) -> bool:
        """Mark the worker as seen now.

        Args:
            worker_id: Its Celery node name.

        Returns:
            ``False`` when its row is gone (the caller registers again).

        Raises:
            StoreError: The database failed.
        """
        with self._tx() as conn:
            return bool(conn.execute(
                update(workers).where(workers.c.id == worker_id).values(last_seen_at=utcnow())
            ).rowcount)

    def unregister_worker(self, *, worker_id: str) -> bool:
        """Remove the worker's row (it is stopping).

        Args:
            worker_id: Its Celery node name.

        Returns:
            Whether a row was removed.

        Raises:
            StoreError: The database failed.
        """
        with self._tx() as conn:
            removed = bool(conn.execute(delete(workers).where(workers.c.id == worker_id)).rowcount)
        logger.info("worker %s unregistered", worker_id)
        return removed

    def list_workers(
        self, *, live_within_seconds: float | None = None, target: str | None = None
    ) -> list[WorkerInfo]:
        """Return advertised workers, most recently started first.

        Args:
            live_within_seconds: Only workers seen within this many seconds (all when ``None``).
            target: Only workers serving this target.

        Returns:
            The workers.

        Raises:
            StoreError: The database failed.
        """
        query = select(workers).order_by(workers.c.started_at.desc(), workers.c.id)
        if live_within_seconds is not None:
            query = query.where(
                workers.c.last_seen_at >= utcnow() - timedelta(seconds=live_within_seconds))
        with self._tx() as conn:
            found = [WorkerInfo.model_validate(dict(r)) for r in conn.execute(query).mappings()]
        # Targets are a JSON list: filtered here, portable, and the table holds a few rows.
        return [w for w in found if target is None or target in w.targets]

    def live_targets(self, *, live_within_seconds: float) -> set[str]:
        """Return the targets at least one live worker serves.

        Args:
            live_within_seconds: The liveness window.

        Returns:
            The served targets.

        Raises:
            StoreError: The database failed.
        """
        workers_now = self.list_workers(live_within_seconds=live_within_seconds)
        return {t for w in workers_now for t in w.targets}
