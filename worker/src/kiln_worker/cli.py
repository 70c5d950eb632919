"""``kiln-worker``: a Celery worker that compiles the jobs of the targets it serves.

Usage: ``kiln-worker --targets xla[,inf1] [--concurrency N] [--hostname NAME] [--loglevel INFO]``. The broker,
job store and artifact store come from the same ``KILN_*`` variables as the API.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from kiln_service.config import TARGETS, Settings, get_settings
from kiln_service.logs import configure_logging
from kiln_service.queue import COMPILE_TASK, queue_name
from kiln_service.tracing import TracingUnavailableError, require_tracing
from kiln_worker.config import WorkerSettings, parse_targets

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kiln-worker``."""
    parser = argparse.ArgumentParser(
        prog="kiln-worker",
        description="Run a Kiln compile worker (Celery) for the given targets.",
    )
    parser.add_argument(
        "--targets", default=None,
        help=f"comma-separated targets to serve, from {', '.join(TARGETS)} "
        "(default: KILN_WORKER_TARGETS or xla)",
    )
    parser.add_argument("--concurrency", type=int, default=None,
                        help="compiles run at once (default: KILN_WORKER_CONCURRENCY or 1)")
    parser.add_argument(
        "--hostname", default=None,
        help="Celery node name, also this worker's id in GET /v1/workers; give each worker on "
        "one host its own (Celery expands %%h to the host name; default kiln-<targets>@%%h)",
    )
    parser.add_argument("--loglevel", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="log level (default INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the worker until it is stopped (SIGTERM: finish the running job, then exit).

    Returns:
        The process exit code: 2 for bad arguments or settings, 3 when the compile sandbox
        (``KILN_WORKER_SANDBOX``) cannot work on this machine.
    """
    args = build_parser().parse_args(argv)
    try:
        settings, options = _read_settings(args)
    except (ValueError, TracingUnavailableError) as exc:
        print(f"kiln-worker: error: {exc}", file=sys.stderr)
        return 2
    quiet = _install_logging(settings, args.loglevel)
    from kiln_worker._sandbox import SandboxUnavailableError, isolation

    try:  # before any job: a worker that cannot isolate compiles must not take one
        found = isolation(settings, options)
    except SandboxUnavailableError as exc:
        print(f"kiln-worker: error: cannot start: {exc}", file=sys.stderr)
        return 3
    log = logging.getLogger(__name__)
    (log.warning if found.sandbox.mode == "none" else log.info)("%s", found.describe())
    from kiln_worker.celery_app import create_worker_app

    app = create_worker_app(settings, options)
    queues = ",".join(queue_name(t) for t in parse_targets(options.targets))
    log.info(
        "kiln-worker serving %s on %s (job store %s)", queues,
        settings.broker_url.split("@")[-1], settings.resolved_database_url.split("@")[-1],
    )
    app.worker_main([*quiet, *_celery_worker_args(options, queues, args.loglevel, args.hostname)])
    return 0


def _read_settings(args: argparse.Namespace) -> tuple[Settings, WorkerSettings]:
    """The service's and the worker's settings: the environment, overridden by the arguments.

    Raises:
        ValueError: a bad argument or setting.
        TracingUnavailableError: ``KILN_TRACING`` asks for what is not installed.
    """
    overrides: dict[str, object] = {}
    if args.targets is not None:
        overrides["targets"] = ",".join(parse_targets(args.targets))
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        overrides["concurrency"] = args.concurrency
    options = WorkerSettings(**overrides)  # type: ignore[arg-type]
    settings = get_settings()
    if args.hostname is not None and not args.hostname.strip():
        raise ValueError("--hostname must not be empty (such as --hostname kiln-xla-2@%h)")
    require_tracing(settings.tracing)  # spans start in the pool processes, per job
    return settings, options


def _install_logging(settings: Settings, loglevel: str) -> list[str]:
    """Install Kiln's log handler for the worker and keep Celery from replacing it.

    Returns:
        Celery's extra arguments: ``--quiet`` for a JSON log, else none.
    """
    configure_logging(settings.log_format, loglevel, static={"service": "worker"})
    for handler in logging.getLogger().handlers:
        handler.filters.insert(0, _CeleryTaskJob())
    from celery.signals import setup_logging

    # Celery keeps the handler installed above (JSON or text) instead of its own formatting.
    setup_logging.connect(_keep_our_logging, weak=False)
    if settings.log_format != "json":
        return []
    from celery.signals import worker_ready

    worker_ready.connect(_silent_shutdown, weak=False)
    return ["--quiet"]  # no banner: every line of a JSON log is JSON


def _celery_worker_args(options: WorkerSettings, queues: str, loglevel: str,
                       hostname: str | None) -> list[str]:
    """The arguments of ``celery worker`` for these settings.

    Args:
        options: the worker's settings (targets, concurrency).
        queues: the comma-separated queues to consume.
        loglevel: the log level name.
        hostname: the Celery node name; ``kiln-<targets>@%h`` when ``None``.

    Returns:
        The arguments, starting with the ``worker`` command.
    """
    node = hostname or f"kiln-{options.targets.replace(',', '-')}@%h"
    return [
        "worker", f"--loglevel={loglevel}", f"--queues={queues}",
        f"--concurrency={options.concurrency}", "--pool=prefork",
        # Gossip, mingle and event heartbeats coordinate Celery features Kiln does not use,
        # and cost seconds at start-up on the embedded transport.
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        f"--hostname={node}",
    ]


class _CeleryTaskJob(logging.Filter):
    """Celery's own task lines (``Task kiln.compile[<id>] received``) carry the task id, which is
    the job id: give them the ``job_id`` field too."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (record.name.startswith("celery") and isinstance(args, dict)
                and args.get("name") == COMPILE_TASK and isinstance(args.get("id"), str)):
            record.job_id = args["id"]
        return True


def _keep_our_logging(**_kwargs: object) -> None:
    """Celery's ``setup_logging`` signal: connected, it stops Celery from configuring logging."""


def _silent_shutdown(sender: Any = None, **_kwargs: object) -> None:
    """Re-install Celery's SIGTERM/SIGQUIT handlers without their plain-text notice on stdout."""
    from celery.apps.worker import install_worker_term_handler, install_worker_term_hard_handler

    worker = getattr(sender, "controller", None)
    if worker is None:
        return
    install_worker_term_handler(worker, verbose=False)
    install_worker_term_hard_handler(worker, verbose=False)
    logging.getLogger(__name__).info("kiln-worker ready; SIGTERM finishes the running job, then exits")


if __name__ == "__main__":
    sys.exit(main())
