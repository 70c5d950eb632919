"""The task queue, seen from the API: one Celery app configuration shared with the worker.

The service enqueues ``kiln.compile`` *by name* (it never imports worker code) on the queue of the
job's target, ``kiln.<target>``. The broker is ``KILN_BROKER_URL``; the embedded default
``filesystem://`` keeps messages as files under ``{data_dir}/broker`` so one machine needs no
server. Long compiles use late acks and a prefetch of one, so a worker killed mid-job leaves the
message to be redelivered (and the job store decides whether it still needs running).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from kiln_service._fs_broker import TRANSPORT as FOLDER_TRANSPORT
from kiln_service.config import TARGETS, Settings
from kiln_service.errors import DependencyUnavailableError
from kiln_service.tracing import message_headers, span

__all__ = [
    "COMPILE_TASK",
    "broker_transport_options",
    "celery_config",
    "check_broker",
    "create_celery_app",
    "enqueue_compile",
    "queue_name",
]

logger = logging.getLogger(__name__)

#: Name of the compile task the worker registers.
COMPILE_TASK = "kiln.compile"


def queue_name(target: str) -> str:
    """Return the queue of a target: ``kiln.<target>``."""
    return f"kiln.{target}"


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Return transport options for the broker URL (folders of the embedded transport).

    Args:
        settings: The settings.

    Returns:
        Options for ``broker_transport_options``; empty except for ``filesystem://``.
    """
    if not settings.broker_url.startswith("filesystem://"):
        return {"visibility_timeout": settings.max_timeout_seconds + 600}
    base = settings.broker_dir
    folders = {"data": base / "data", "processed": base / "processed", "control": base / "control"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        # Producer and consumer share one folder: what the API writes out the worker reads in.
        "data_folder_in": str(folders["data"]),
        "data_folder_out": str(folders["data"]),
        "control_folder": str(folders["control"]),
        "processed_folder": str(folders["processed"]),
        "store_processed": False,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery configuration shared by the API and the worker.

    Args:
        settings: The settings (broker URL and data dir).

    Returns:
        A mapping for ``Celery.conf.update``.
    """
    exchange = Exchange("kiln", type="direct")  # type: ignore[no-untyped-call]
    embedded = settings.broker_url.startswith("filesystem://")
    return {
        "broker_url": settings.broker_url,
        # The embedded transport keeps its routing state per broker folder (see _fs_broker).
        "broker_transport": FOLDER_TRANSPORT if embedded else None,
        "broker_transport_options": broker_transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_queues": [
            Queue(queue_name(t), exchange=exchange, routing_key=queue_name(t))  # type: ignore[no-untyped-call]
            for t in TARGETS
        ],
        "task_default_queue": queue_name(TARGETS[0]),
        "task_default_exchange": "kiln",
        "task_create_missing_queues": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "broker_heartbeat": 0 if embedded else 60,
    }


def create_celery_app(settings: Settings, *, main: str = "kiln") -> Celery:
    """Create a Celery app configured for Kiln (used by the API and by ``kiln_worker``).

    Args:
        settings: The settings.
        main: The app's main name.

    Returns:
        The configured app (no tasks registered here; the worker registers ``kiln.compile``).
    """
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


def enqueue_compile(app: Celery, *, job_id: str, target: str) -> str:
    """Send ``kiln.compile(job_id)`` to the target's queue.

    Args:
        app: The Celery app (see :func:`create_celery_app`).
        job_id: The job to compile.
        target: Its target, selecting the queue ``kiln.<target>``.

    Returns:
        The Celery task id (the job id, so a duplicate send is recognisable).

    Raises:
        DependencyUnavailableError: The broker could not be reached.
    """
    queue = queue_name(target)
    try:
        with span("kiln.enqueue", {"kiln.job_id": job_id, "messaging.system": "celery",
                                   "messaging.destination.name": queue}, kind="producer"):
            result = app.send_task(
                COMPILE_TASK, args=[job_id], queue=queue, routing_key=queue, exchange="kiln",
                task_id=job_id, retry=True, headers=message_headers(),
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
    except Exception as exc:  # kombu raises many types (OperationalError, OSError, …)
        logger.warning("could not enqueue job %s on %s: %s", job_id, queue, exc)
        raise DependencyUnavailableError(
            f"the job queue is unreachable ({type(exc).__name__}); try again shortly",
            code="broker_unavailable", headers={"Retry-After": "5"},
        ) from exc
    logger.info("job %s queued on %s", job_id, queue)
    return str(result.id)


def check_broker(app: Celery, *, timeout: float = 2.0) -> None:
    """Open a broker connection, or raise.

    Args:
        app: The Celery app.
        timeout: Seconds to wait for the connection.

    Raises:
        DependencyUnavailableError: The broker is unreachable.
    """
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            if app.conf.broker_url.startswith("filesystem://"):
                folder = Path(app.conf.broker_transport_options["data_folder_out"])
                if not folder.is_dir():
                    raise OSError(f"broker folder {folder} is missing")
    except Exception as exc:
        raise DependencyUnavailableError(
            f"broker unreachable: {type(exc).__name__}: {exc}", code="broker_unavailable"
        ) from exc
