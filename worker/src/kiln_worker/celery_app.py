"""The worker's Celery app: the service's shared configuration plus worker-only settings.

``celery -A kiln_worker.celery_app worker -Q kiln.xla`` works, but ``kiln-worker --targets xla``
is the supported entry point. TensorFlow is never imported here nor in the task module: each
compile runs in a child process (:mod:`kiln_worker.runner`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from kiln_service.config import Settings, get_settings
from kiln_service.queue import create_celery_app
from kiln_worker.config import WorkerSettings, get_worker_settings

__all__ = ["create_worker_app", "worker_config"]

#: how often the embedded (filesystem) transport looks for new messages; kombu's default of
#: one second would add up to a second of latency to every job
FILESYSTEM_POLL_SECONDS = 0.05


def worker_config(settings: Settings, options: WorkerSettings) -> dict[str, Any]:
    """What a worker adds to the shared Celery configuration.

    Args:
        settings: the service settings (broker).
        options: the worker settings (concurrency, recycling).

    Returns:
        A mapping for ``Celery.conf.update``.
    """
    config: dict[str, Any] = {
        "worker_concurrency": options.concurrency,
        "worker_max_tasks_per_child": options.max_tasks_per_child,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        # Compiles are long; a result backend would only hold {"job_id", "status"}, which the
        # job store already has.
        "task_ignore_result": True,
        "worker_send_task_events": False,
        # Reconnect to the broker forever (Celery gives up after 100 tries by default): a
        # worker must outlive a Redis restart of any length and resume by itself.
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
    }
    if settings.broker_url.startswith("filesystem://"):
        # The embedded transport has no fanout worth using for remote control, and polls.
        config["worker_enable_remote_control"] = False
    return config


def create_worker_app(
    settings: Settings | None = None, options: WorkerSettings | None = None
) -> Celery:
    """Create the worker's Celery app with ``kiln.compile`` registered and advertised.

    Once the worker is ready it registers its node name and targets in the job store's
    ``workers`` table and refreshes them until it shuts down (:mod:`kiln_worker._advertise`).

    Args:
        settings: service settings (default: from the environment).
        options: worker settings (default: from the environment).

    Returns:
        The app.
    """
    settings = settings or get_settings()
    options = options or get_worker_settings()
    worker_app = create_celery_app(settings, main="kiln_worker")
    worker_app.conf.update(worker_config(settings, options))
    if settings.broker_url.startswith("filesystem://"):
        transport = dict(worker_app.conf.broker_transport_options or {})
        transport["polling_interval"] = FILESYSTEM_POLL_SECONDS
        worker_app.conf.broker_transport_options = transport
    from kiln_worker.tasks import register_tasks

    register_tasks(worker_app, settings, options)
    from kiln_worker._advertise import install_advertiser

    install_advertiser(worker_app, settings, options)
    from kiln_worker._reconcile import install_reconciler

    install_reconciler(worker_app, settings, options)
    return worker_app


app: Celery  # built by __getattr__ on first access


def __getattr__(name: str) -> Any:
    # ``app`` is built on first use, not at import: building it reads the environment and
    # creates the embedded broker's folders, which importing alone must not do.
    if name == "app":
        global app
        app = create_worker_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
