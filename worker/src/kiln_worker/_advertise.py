"""Worker advertisement: register this worker's targets in the job store and keep it fresh.

When Celery's main process is ready (``worker_ready``) a daemon thread registers the worker
(its Celery node name, targets, host, pid, version, per-target toolchain versions) and refreshes ``last_seen_at`` every
``KILN_WORKER_ADVERTISE_SECONDS``; on ``worker_shutdown`` it stops and removes the row. The API
reads the table to tell whether a job's target has a live worker. No TensorFlow here.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from kiln_service.config import Settings
from kiln_service.errors import StoreError
from kiln_service.stores.jobs import JobStore
from kiln_worker.config import WorkerSettings, parse_targets

__all__ = ["Advertiser", "install_advertiser"]

logger = logging.getLogger(__name__)


def _version(dist: str, missing: str = "none") -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return missing


def _kiln_worker_version() -> str:
    return _version("kiln-worker", "0.0.0")


def toolchains(targets: list[str]) -> dict[str, dict[str, str]]:
    """Per target, the versions that make this worker's compiles (read without importing them).

    Part of the compile cache's key (``kiln_service.cache``): a job compiled by another Kiln,
    TensorFlow or backend never answers a new one. The compile child runs in this same Python
    environment, so these are the versions it imports.
    """
    common = {"kiln-worker": _kiln_worker_version(), "tensorflow": _version("tensorflow"),
              "tf-keras": _version("tf-keras"),
              "default-placement": os.environ.get("KILN_PLACEMENT") or "measured"}
    backends = {"xla": {"backend": "xla"},
                "inf1": {"backend": "neuron", "tensorflow-neuron": _version("tensorflow-neuron"),
                         "neuron-cc": _version("neuron-cc")}}
    return {t: {**common, **backends.get(t, {"backend": t})} for t in targets}


class Advertiser:
    """Keeps one worker's row in the ``workers`` table fresh from a daemon thread.

    Args:
        store: The job store (opened unpooled: the Celery main process forks pool children).
        worker_id: The Celery node name.
        targets: The targets the worker serves.
        interval: Seconds between refreshes.
        sandbox: How the worker isolates compiles (shown by ``GET /readyz``).
    """

    def __init__(self, store: JobStore, *, worker_id: str, targets: list[str], interval: float,
                 sandbox: str | None = None) -> None:
        self.store = store
        self.sandbox = sandbox
        self.worker_id = worker_id
        self.targets = targets
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self) -> None:
        """Write this worker's row (seen now).

        Raises:
            StoreError: The job store failed.
        """
        self.store.register_worker(worker_id=self.worker_id, targets=self.targets,
                                   host=socket.gethostname(), pid=os.getpid(),
                                   version=_kiln_worker_version(), sandbox=self.sandbox,
                                   toolchains=toolchains(self.targets))

    def beat(self) -> None:
        """Refresh ``last_seen_at``, registering again if the row is missing; log failures."""
        try:
            if not self.store.touch_worker(worker_id=self.worker_id):
                self.register()
        except StoreError as exc:
            # The database may be back at the next beat; the worker keeps compiling meanwhile.
            logger.warning("could not advertise worker %s: %s", self.worker_id, exc.detail)

    def start(self) -> None:
        """Register now (failures are logged and retried) and start refreshing."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="kiln-advertise", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        """Stop refreshing and remove the row, so the API stops counting this worker at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        try:
            self.store.unregister_worker(worker_id=self.worker_id)
        except StoreError as exc:
            logger.warning("could not unregister worker %s: %s", self.worker_id, exc.detail)
        self.store.dispose()


def install_advertiser(app: Celery, settings: Settings, options: WorkerSettings) -> None:
    """Advertise the worker of ``app`` while it runs (connects Celery's ready/shutdown signals).

    Args:
        app: The worker's Celery app; signals of other apps are ignored.
        settings: Service settings (the job store URL).
        options: Worker settings (targets, refresh interval).
    """
    state: dict[str, Advertiser] = {}

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or "advertiser" in state:
            return
        from kiln_worker._sandbox import isolation

        advertiser = Advertiser(
            JobStore(settings.resolved_database_url, pooled=False),
            worker_id=str(getattr(sender, "hostname", None) or socket.gethostname()),
            targets=parse_targets(options.targets), interval=options.advertise_seconds,
            sandbox=isolation(settings, options).sandbox.mode,
        )
        advertiser.start()
        state["advertiser"] = advertiser

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        advertiser = state.pop("advertiser", None)
        if advertiser is not None:
            advertiser.stop()

    # Strong references: the handlers are closures that nothing else keeps alive.
    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
