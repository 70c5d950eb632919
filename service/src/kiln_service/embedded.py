"""``kiln-service up``: the API and one worker on one machine, with the embedded defaults.

Everything lives under ``--data-dir``: the SQLite job store (``kiln.db``), the filesystem Celery
transport (``broker/``), the artifacts (``artifacts/``), the worker's log (``logs/worker.log``)
and, with auth on (the default), the first API key (``api-key``, mode 0600).
URLs set explicitly in ``KILN_*`` variables still win, so the same command can run against Redis
or PostgreSQL. The worker is a ``kiln-worker`` subprocess (the service never imports worker
code); it is stopped with the API on SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from kiln_service.config import Settings, get_settings
from kiln_service.logs import uvicorn_log_config

__all__ = ["run_up", "worker_command"]

logger = logging.getLogger(__name__)

#: how long a stopping worker may take to finish its current step before it is killed
WORKER_STOP_SECONDS = 10.0
#: file under the data dir holding the first API key ``up`` creates
API_KEY_FILE = "api-key"


def worker_command(targets: str, concurrency: int, log_level: str) -> list[str]:
    """The command that starts the worker: ``kiln-worker`` next to this Python, else ``-m``.

    Args:
        targets: comma-separated targets to serve.
        concurrency: compiles at once.
        log_level: the worker's log level.

    Returns:
        The argv.
    """
    args = ["--targets", targets, "--concurrency", str(concurrency), "--loglevel", log_level.upper()]
    sibling = Path(sys.executable).with_name("kiln-worker")
    if sibling.is_file():
        return [str(sibling), *args]
    found = shutil.which("kiln-worker")
    if found:
        return [found, *args]
    return [sys.executable, "-m", "kiln_worker.cli", *args]


def run_up(
    port: int = 8000,
    data_dir: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    *,
    targets: str | Sequence[str] = "xla",
    concurrency: int = 1,
    log_level: str = "info",
) -> int:
    """Run the API and a worker until SIGINT or SIGTERM.

    Args:
        port: the API's port.
        data_dir: root of the embedded database, broker and artifacts (created if missing);
            default ``KILN_DATA_DIR`` or ``./.kiln``.
        host: the API's address.
        targets: targets the worker serves (a list, or comma-separated).
        concurrency: compiles the worker runs at once.
        log_level: log level of both processes.

    Returns:
        The exit code: 0 after a requested stop, 1 if the API could not start or the worker died.
    """
    import uvicorn

    settings = _embedded_settings(data_dir)
    if not isinstance(targets, str):
        targets = ",".join(targets)
    from kiln_service.migrations import upgrade

    upgrade(settings.resolved_database_url)
    auth_lines = _prepare_auth(settings)
    from kiln_service.main import create_app

    app = create_app(settings)
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    worker_log = open(logs / "worker.log", "ab")  # noqa: SIM115  (closed in the finally below)
    worker = _start_worker(worker_command(targets, concurrency, log_level), worker_log)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                                           log_config=uvicorn_log_config()))
    died = threading.Event()
    threading.Thread(target=_watch_worker, args=(worker, server, died), daemon=True).start()
    _print_banner(settings, host, port, logs / "worker.log")
    print("\n".join(f"kiln: {line}" for line in auth_lines), flush=True)
    _keep_signals_for_cleanup()
    try:
        server.run()
    finally:
        _stop_worker(worker)
        worker_log.close()
    if died.is_set() or not server.started:
        return 1
    print("kiln: stopped (API and worker)", flush=True)
    return 0


def _prepare_auth(settings: Settings) -> list[str]:
    """Give a newcomer a first key; return the lines that tell how to authenticate.

    When auth is on and the job store has no key at all, a key for tenant ``default`` is created
    and written to ``{data_dir}/api-key`` (mode 0600); the key itself is never printed or logged.
    """
    if not settings.auth_enabled:
        return ["auth is OFF (KILN_AUTH=off): every caller is tenant 'default', no key needed"]
    from kiln_service.keys_cli import write_key_file
    from kiln_service.stores.jobs import JobStore

    key_file = settings.data_dir / API_KEY_FILE
    new_keys = f"KILN_DATA_DIR={settings.data_dir} kiln-service keys create --tenant NAME"
    store = JobStore(settings.resolved_database_url)
    try:
        if store.count_api_keys() == 0:
            created = store.create_api_key(tenant="default", name="first key (kiln-service up)")
            write_key_file(key_file, created.key)
            first = f"auth is ON: created a first API key (tenant 'default') in {key_file}"
        elif key_file.is_file():
            first = f"auth is ON: an API key (tenant 'default') is in {key_file}"
        else:
            first = "auth is ON: API keys exist in the job store"
    finally:
        store.dispose()
    return [first,
            f"use it with: export KILN_API_KEY=$(cat {key_file})  (or curl -H \"Authorization: "
            f"Bearer $(cat {key_file})\")" if key_file.is_file() else "use a key as KILN_API_KEY",
            f"more keys: {new_keys}; KILN_AUTH=off turns auth off"]


def _keep_signals_for_cleanup() -> None:
    # uvicorn re-raises SIGINT/SIGTERM once it has shut down, which with the default handlers
    # would end this process before it stops the worker; these handlers make that re-raise
    # harmless (uvicorn's own handlers, installed while it serves, do the stopping).
    def note(signum: int, _frame: Any) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)

    signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)


def _embedded_settings(data_dir: str | os.PathLike[str] | None) -> Settings:
    if data_dir is None:
        data_dir = get_settings().data_dir
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # The worker subprocess inherits these, so both processes see the same stores.
    os.environ["KILN_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    return get_settings()


def _start_worker(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    logger.info("starting worker: %s", " ".join(argv))
    # Its own session, so that stopping it reaches its pool processes too.
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ))


def _watch_worker(worker: subprocess.Popen[bytes], server: Any, died: threading.Event) -> None:
    while worker.poll() is None:
        if server.should_exit:
            return
        time.sleep(0.5)
    if not server.should_exit:
        logger.error("the worker exited unexpectedly (status %s); stopping the API; "
                     "see logs/worker.log in the data dir", worker.returncode)
        died.set()
        server.should_exit = True


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        # Warm shutdown: the worker's main process stops taking jobs and lets the running one
        # finish (its pool processes must not get the signal: they would die mid-job).
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("worker did not stop within %.0f s; killing it", WORKER_STOP_SECONDS)
    # Whatever is left of its process group (pool processes) goes now; a compile child, in a
    # session of its own, dies with its pool process.
    _signal_group(worker.pid, signal.SIGKILL)
    worker.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _print_banner(settings: Settings, host: str, port: int, worker_log: Path) -> None:
    url = f"http://{host}:{port}"
    print(
        f"kiln: API on {url} (interactive docs {url}/docs), worker log {worker_log}\n"
        f"kiln: data in {settings.data_dir} (job store {settings.resolved_database_url}, "
        f"broker {settings.broker_url})\n"
        f"kiln: press Ctrl-C or send SIGTERM (kill {os.getpid()}) to stop",
        flush=True,
    )
