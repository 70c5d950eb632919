"""Run the job store reconciler (:mod:`kiln_service.reconcile`) inside every worker.

When Celery's main process is ready a daemon thread re-sends ``queued`` jobs whose message was
lost, takes back ``running`` jobs whose lease lapsed and deletes the stored outputs of attempts
that lost; ``kiln-service up`` gets it through its
worker. Several workers may run it at once: each transition is a conditional ``UPDATE`` that one
of them wins. Turn it off with ``KILN_WORKER_RECONCILE=false``. No TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from kiln_service.config import Settings
from kiln_service.queue import enqueue_compile
from kiln_service.reconcile import Reconciler, ReconcilerThread, ReconcileSettings
from kiln_service.stores.artifacts import open_artifact_store
from kiln_service.stores.jobs import JobStore
from kiln_worker._job_dirs import sweep_job_cgroups, sweep_job_dirs
from kiln_worker.config import WorkerSettings

__all__ = ["install_reconciler", "sweep_leftovers"]

logger = logging.getLogger(__name__)


class _SweepingReconciler(Reconciler):
    """The job store reconciler, plus a sweep of this host's orphaned job folders each pass."""

    def __init__(self, *args: Any, sweep: Callable[[], object], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sweep = sweep

    def run_once(self) -> dict[str, int]:
        try:
            self._sweep()
        except Exception:  # a sweep must never stop the job store's recovery
            logger.exception("sweeping job folders failed")
        return super().run_once()


def sweep_leftovers(settings: Settings, options: WorkerSettings) -> None:
    """Remove job folders and control groups of compiles whose worker process is gone."""
    from kiln_worker._sandbox import isolation

    sweep_job_dirs(options.work_dir)
    sweep_job_cgroups(isolation(settings, options).cgroups)


def install_reconciler(app: Celery, settings: Settings, options: WorkerSettings) -> None:
    """Run the reconciler loop while the worker of ``app`` runs (unless turned off).

    Whether or not the loop runs, the worker sweeps orphaned job folders when it is ready.

    Args:
        app: The worker's Celery app (also used to re-send jobs).
        settings: Service settings (the job store URL).
        options: Worker settings (``reconcile``, ``max_attempts``).
    """
    state: dict[str, tuple[ReconcilerThread, JobStore]] = {}

    def enqueue(job_id: str, target: str) -> object:
        return enqueue_compile(app, job_id=job_id, target=target)

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or "loop" in state:
            return
        sweep_leftovers(settings, options)
        if not options.reconcile:
            return
        store = JobStore(settings.resolved_database_url, pooled=False)
        config = ReconcileSettings(max_attempts=options.max_attempts)
        artifacts = open_artifact_store(settings.resolved_storage_url)
        loop = ReconcilerThread(_SweepingReconciler(
            store, enqueue, config, artifacts=artifacts,
            sweep=lambda: sweep_leftovers(settings, options)))
        loop.start()
        state["loop"] = (loop, store)
        logger.info("reconciler running every %.0f s (re-send queued jobs after %.0f s)",
                    config.reconcile_interval_seconds, config.requeue_after_seconds)

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or "loop" not in state:
            return
        loop, store = state.pop("loop")
        loop.stop()
        store.dispose()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
