"""The stores and settings a worker process uses for every job.

Its own module so that the attempt (:mod:`kiln_worker._compile_job`), the compile process
(:mod:`kiln_worker._compile_run`, :mod:`kiln_worker._warm`) and storing the results
(:mod:`kiln_worker._compile_store`) all import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kiln_service.config import Settings, get_settings
from kiln_service.events import make_publisher
from kiln_service.stores.artifacts import ArtifactStore, open_artifact_store
from kiln_service.stores.jobs import JobStore
from kiln_worker.config import WorkerSettings, get_worker_settings

__all__ = ["WorkerContext"]


@dataclass
class WorkerContext:
    """The stores and settings a worker process uses for every job (built once per process)."""

    settings: Settings
    options: WorkerSettings
    jobs: JobStore
    artifacts: ArtifactStore
    enqueue: Callable[[str, str], object] | None = None
    """Sends ``kiln.compile`` for ``(job_id, target)`` when a system error is retried (without
    it, the reconciler re-sends the queued job after ``KILN_REQUEUE_AFTER_SECONDS``)."""

    @classmethod
    def open(cls, settings: Settings | None = None, options: WorkerSettings | None = None,
             enqueue: Callable[[str, str], object] | None = None) -> WorkerContext:
        """Open the job and artifact stores named by the settings (environment by default)."""
        settings = settings or get_settings()
        return cls(
            settings=settings,
            options=options or get_worker_settings(),
            jobs=_announcing(JobStore(settings.resolved_database_url), settings),
            artifacts=open_artifact_store(settings.resolved_storage_url),
            enqueue=enqueue,
        )


def _announcing(store: JobStore, settings: Settings) -> JobStore:
    """The store, announcing each change on Redis pub/sub when the broker is Redis (live events)."""
    store.notifier = make_publisher(settings)
    return store
