"""The FastAPI application: :func:`create_app` wires settings, stores, queue and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from celery import Celery
from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln_service import errors_page
from kiln_service._observe import ObserveMiddleware
from kiln_service.config import Settings, get_settings
from kiln_service.deps import Services, get_tenant
from kiln_service.errors import install_error_handlers
from kiln_service.events import EventBus
from kiln_service.metrics import Metrics
from kiln_service.openapi import install_openapi
from kiln_service.queue import create_celery_app
from kiln_service.routes import (
    artifacts,
    cache,
    compile,
    events,
    health,
    jobs,
    webhooks,
    workers,
)
from kiln_service.stores.artifacts import open_artifact_store
from kiln_service.stores.jobs import JobStore
from kiln_service.tracing import TracingMiddleware, configure_tracing, fastapi_telemetry_off
from kiln_service.ui import install_ui
from kiln_service.ui.session import session_secret
from kiln_service.webhooks.sender import WebhookSender, run_sender
from kiln_service.webhooks.store import WebhookStore

__all__ = ["DatabaseNotMigratedError", "create_app", "prepare_database", "sweep_staging"]

logger = logging.getLogger(__name__)


class DatabaseNotMigratedError(RuntimeError):
    """The job store's schema is not at the revision this code needs."""


def prepare_database(settings: Settings) -> None:
    """Migrate the embedded SQLite store, or refuse an unmigrated database.

    Args:
        settings: The settings (database URL, ``auto_migrate``).

    Raises:
        DatabaseNotMigratedError: The database is behind and auto-migration is off.
    """
    from kiln_service import migrations

    url = settings.resolved_database_url
    if settings.should_auto_migrate:
        migrations.upgrade(url)
        return
    current, head = migrations.current_revision(url), migrations.head_revision()
    if current != head:
        raise DatabaseNotMigratedError(
            f"the job store at {JobStore(url).url} is at revision {current or 'none'}, but this "
            f"Kiln needs {head}; run `kiln-service migrate` (with the same KILN_DATABASE_URL) "
            "first, or set KILN_AUTO_MIGRATE=true"
        )


def process_staging_dir(staging: Path) -> Path:
    """This API process's own staging folder: ``<staging>/<host>.<pid>``.

    A folder per process lets a restarted API tell the leftovers of a crashed process (its pid
    is gone) from uploads another live process on the same data dir is receiving right now.
    """
    return staging / f"{socket.gethostname()}.{os.getpid()}"


def sweep_staging(staging: Path, *, older_than_seconds: float = 6 * 3600) -> int:
    """Remove staging leftovers of uploads cut short by a crash.

    A process folder of this host whose pid no longer runs goes at once; anything else (other
    hosts sharing the folder, files of older versions) only once older than the age limit.

    Args:
        staging: The staging folder (the parent of the per-process folders).
        older_than_seconds: Minimum age of what is removed when its owner cannot be checked.

    Returns:
        How many entries were removed.
    """
    cutoff = time.time() - older_than_seconds
    removed = 0
    for entry in staging.iterdir() if staging.is_dir() else ():
        try:
            owner_alive = _owner_alive(entry)
            stale = entry.stat().st_mtime < cutoff if owner_alive is None else not owner_alive
            if stale:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
        except OSError:
            continue
    if removed:
        logger.info("removed %d stale staging entries from %s", removed, staging)
    return removed


def _owner_alive(entry: Path) -> bool | None:
    """Whether the process owning a ``<this host>.<pid>`` folder runs; ``None`` if unknowable."""
    host, _, pid = entry.name.rpartition(".")
    if not entry.is_dir() or host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
    return False


def _version() -> str:
    try:
        return version("kiln-service")
    except PackageNotFoundError:
        return "0.0.0"


class RequestIdMiddleware:
    """Give every request an id (``X-Request-ID``, kept if the client sent a sane one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if 0 < len(sent) <= 128 and sent.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(settings: Settings | None = None, *, celery: Celery | None = None) -> FastAPI:
    """Build the Kiln API.

    Stores are opened here (no connection is made yet), so the app also works under transports
    that skip the lifespan (tests); the lifespan checks or applies migrations.

    Args:
        settings: Settings to use; ``get_settings()`` when omitted.
        celery: Celery app to enqueue with; built from the settings when omitted.

    Returns:
        The application.
    """
    settings = settings or get_settings()
    services = _open_services(settings, celery)
    event_bus = EventBus(settings, services.job_store)
    services.job_store.notifier = event_bus.notify
    traced = configure_tracing(settings.tracing, service_name="kiln-api")
    app = FastAPI(
        title="Kiln", version=_version(), lifespan=_lifespan(services, event_bus),
        description="Compile TensorFlow SavedModels for accelerators (tensorflow.neuron.trace as a service).",
        **(fastapi_telemetry_off() if traced else {}),
    )
    app.state.services = services
    app.state.event_bus = event_bus
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app)
    if traced:
        app.add_middleware(TracingMiddleware)
    app.add_middleware(ObserveMiddleware, metrics=services.metrics)
    app.add_middleware(RequestIdMiddleware)
    _include_routes(app)
    return app


def _open_services(settings: Settings, celery: Celery | None) -> Services:
    """The stores, queue and metrics of one API process (no connection is made yet)."""
    return Services(
        settings=settings,
        job_store=JobStore(settings.resolved_database_url),
        artifact_store=open_artifact_store(settings.resolved_storage_url),
        celery=celery or create_celery_app(settings),
        metrics=Metrics(),
        staging_dir=process_staging_dir(settings.staging_dir),
        ui_secret=session_secret(settings.ui_session_secret, settings.data_dir),
    )


def _lifespan(services: Services, event_bus: EventBus
              ) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: prepare the database and staging, run the event bus and webhooks."""
    settings = services.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prepare_database(settings)
        services.staging_dir.mkdir(parents=True, exist_ok=True)
        sweep_staging(settings.staging_dir)
        logger.info("Kiln API ready (jobs %s, artifacts %s)", services.job_store.url,
                    getattr(services.artifact_store, "url", "?"))
        event_bus.start()
        sender = _start_webhook_sender(services)
        yield
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        event_bus.stop()
        services.job_store.dispose()

    return lifespan


def _include_routes(app: FastAPI) -> None:
    """The API's routes, the UI and the OpenAPI document."""
    # Every /v1 route authenticates (once per request: FastAPI caches the dependency, so the
    # routes' own TenantDep reuses the result); health, metrics and the docs stay open.
    for module in (compile, jobs, events, artifacts, workers, webhooks, cache):
        app.include_router(module.router, dependencies=[Depends(get_tenant)])
    app.include_router(health.router)
    app.include_router(errors_page.router)
    install_ui(app)
    install_openapi(app)


def _start_webhook_sender(services: Services) -> asyncio.Task[None] | None:
    """Start this process's webhook sender (``KILN_WEBHOOK_SENDER``), a task of the lifespan."""
    settings = services.settings
    if not settings.webhook_sender:
        return None
    outcomes = services.metrics.webhook_deliveries
    sender = WebhookSender(WebhookStore(services.job_store.engine), settings,
                           on_outcome=lambda outcome: outcomes.labels(outcome=outcome).inc())
    return asyncio.create_task(run_sender(sender, settings.webhook_poll_seconds),
                               name="kiln-webhook-sender")
