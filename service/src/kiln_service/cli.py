"""``kiln-service``: serve the API, apply migrations, manage API keys (``keys``), reconcile the job
store with the broker (``reconcile``), or run API and worker together (``up``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kiln_service.logs import configure_logging, uvicorn_log_config

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln-service", description="Kiln compile service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default=None, help="bind address (default KILN_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default KILN_PORT or 8000)")
    serve.add_argument("--log-level", default="info")
    sub.add_parser("migrate", help="apply the job store's migrations (KILN_DATABASE_URL)")
    up = sub.add_parser("up", help="run the API and a worker on this machine, embedded defaults")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--data-dir", type=Path, default=None, help="default KILN_DATA_DIR or ./.kiln")
    up.add_argument("--targets", default="xla", help="comma-separated targets the worker serves")
    reconcile = sub.add_parser(
        "reconcile", help="re-send lost queued jobs and recover jobs of dead workers "
        "(workers already do this; use it where no worker runs the loop, or from cron)")
    reconcile.add_argument("--once", action="store_true", help="run one pass, print its counts")
    from kiln_service.keys_cli import add_keys_parser

    add_keys_parser(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from kiln_service._extras import require_api

    require_api("serve")
    import uvicorn

    from kiln_service.config import get_settings
    from kiln_service.main import DatabaseNotMigratedError, create_app, prepare_database

    settings = get_settings()
    try:
        prepare_database(settings)
    except DatabaseNotMigratedError as exc:
        print(f"kiln-service: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=args.host or settings.host,
                port=args.port or settings.port, log_level=args.log_level,
                log_config=uvicorn_log_config())
    return 0


def _migrate() -> int:
    from kiln_service import migrations
    from kiln_service.config import get_settings
    from kiln_service.stores.jobs import JobStore

    settings = get_settings()
    url = settings.resolved_database_url
    migrations.upgrade(url)
    print(f"job store {JobStore(url).url} is at revision {migrations.current_revision(url)}")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    import json
    import threading

    from kiln_service.config import get_settings
    from kiln_service.queue import create_celery_app, enqueue_compile
    from kiln_service.reconcile import Reconciler, ReconcilerThread
    from kiln_service.stores.artifacts import open_artifact_store
    from kiln_service.stores.jobs import JobStore

    settings = get_settings()
    celery = create_celery_app(settings)
    reconciler = Reconciler(
        JobStore(settings.resolved_database_url),
        lambda job_id, target: enqueue_compile(celery, job_id=job_id, target=target),
        artifacts=open_artifact_store(settings.resolved_storage_url))
    if args.once:
        print(json.dumps(reconciler.run_once()))
        return 0
    loop = ReconcilerThread(reconciler)
    loop.start()
    logger.info("reconciling every %.0f s; Ctrl-C stops",
                reconciler.settings.reconcile_interval_seconds)
    try:
        threading.Event().wait()
    finally:
        loop.stop()
    return 0


def _up(args: argparse.Namespace) -> int:
    # Imported here: the embedded runner (a colleague's module) pulls in the worker side.
    from kiln_service._extras import require_api
    from kiln_service.embedded import run_up

    require_api("up")

    result = run_up(host=args.host, port=args.port, data_dir=args.data_dir,
                    targets=[t.strip() for t in args.targets.split(",") if t.strip()])
    return int(result or 0)


def _log_format() -> str:
    """``KILN_LOG_FORMAT``; text when the settings cannot be read (the command reports why)."""
    from kiln_service.config import get_settings

    try:
        return get_settings().log_format
    except ValueError:
        return "text"


def main(argv: list[str] | None = None) -> int:
    """Run the ``kiln-service`` command.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args = _parser().parse_args(argv)
    # ``keys`` prints for people and scripts; migration chatter would only get in the way.
    quiet = args.command == "keys"
    configure_logging(_log_format(), logging.WARNING if quiet else logging.INFO,
                      static={"service": "api"})
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "migrate":
            return _migrate()
        if args.command == "reconcile":
            return _reconcile(args)
        if args.command == "keys":
            from kiln_service.keys_cli import run_keys

            return run_keys(args)
        return _up(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if logger.isEnabledFor(logging.DEBUG):
            raise
        print(f"kiln-service {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
