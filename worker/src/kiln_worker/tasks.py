"""The ``kiln.compile`` Celery task: thin, idempotent, job id in and a small dict out.

All the work is in :mod:`kiln_worker._compile_job`; the task only finds this process's stores
(opened once per pool process, after the fork) and hands over the job id. Each pool process
keeps one compile process started ahead (:mod:`kiln_worker._warm`): started when the pool
process starts and after each job, stopped when it shuts down.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, current_task
from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.log import get_task_logger

from kiln_service.config import Settings
from kiln_service.logs import bound
from kiln_service.queue import COMPILE_TASK, enqueue_compile
from kiln_service.tracing import configure_tracing, force_flush
from kiln_worker._compile_job import run_compile_job
from kiln_worker._context import WorkerContext
from kiln_worker._tracing import task_span
from kiln_worker._warm import WarmSlot
from kiln_worker.config import WorkerSettings

__all__ = ["compile_job", "register_tasks"]

logger: logging.Logger = get_task_logger(__name__)
_context: WorkerContext | None = None
_configured: tuple[Settings | None, WorkerSettings | None] = (None, None)
_app: Celery | None = None
#: this pool process's compile process started ahead of its next job
_warm = WarmSlot()


def _worker_context() -> WorkerContext:
    # Opened lazily in the pool process: database connections must not cross a fork.
    global _context
    if _context is None:
        _context = WorkerContext.open(*_configured, enqueue=_enqueue)
        configure_tracing(_context.settings.tracing, service_name="kiln-worker")
    return _context


def _enqueue(job_id: str, target: str) -> object:
    # Used to re-send a job retried after a system error; the reconciler covers a failure here.
    if _app is None:
        raise RuntimeError("kiln.compile is not registered on an app")
    return enqueue_compile(_app, job_id=job_id, target=target)


def compile_job(job_id: str) -> dict[str, Any]:
    """Compile one job (``kiln.compile``).

    Args:
        job_id: the job to compile; the job store says whether it still needs to run.

    Returns:
        ``{"job_id", "status"}`` with the job's final status, or ``skipped``.
    """
    with bound(job_id=job_id):
        logger.info("job %s: received", job_id)
        ctx = _worker_context()
        try:
            with task_span(job_id, current_task.request if current_task else None) as span:
                result = run_compile_job(ctx, job_id, warm=_warm)
                span.set({"kiln.job_status": result["status"]})
        finally:
            force_flush()  # a recycled pool process must not take the job's spans with it
            _warm.fill(ctx)  # the next job's, started now (this is the main thread)
        logger.info("job %s: %s", job_id, result["status"])
    return result


def _start_warm(**_: Any) -> None:
    """``worker_process_init``: a new pool process starts its first compile process ahead."""
    try:
        _warm.fill(_worker_context())
    except Exception as exc:  # the stores are down, say: the first job starts its own
        logger.warning("could not start a compile process ahead: %s", exc)


def _stop_warm(**_: Any) -> None:
    """``worker_process_shutdown``: stop the waiting compile process and remove its folder."""
    _warm.close()


def register_tasks(
    app: Celery, settings: Settings | None = None, options: WorkerSettings | None = None
) -> None:
    """Register ``kiln.compile`` on ``app`` (late acks: a lost worker's job is redelivered).

    Args:
        app: the worker's Celery app.
        settings: service settings the task's stores are opened with (default: environment).
        options: worker settings the task runs with (default: environment).
    """
    global _configured, _app
    _configured = (settings, options)
    _app = app
    app.task(name=COMPILE_TASK, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)(compile_job)
    worker_process_init.connect(_start_warm, weak=False)
    worker_process_shutdown.connect(_stop_warm, weak=False)
