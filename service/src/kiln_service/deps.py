"""FastAPI dependencies: settings, stores, queue and metrics, as ``Annotated`` aliases.

The stores live on ``app.state.services`` (built by :func:`kiln_service.main.create_app`).
:func:`get_tenant` authenticates the caller's ``Authorization: Bearer`` API key and returns its
tenant, which every store call takes; with ``KILN_AUTH=off`` every caller is tenant ``default``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kiln_service._shared_state import SharedState, open_shared_state
from kiln_service.config import Settings, get_settings
from kiln_service.errors import UnauthorizedError
from kiln_service.fairness import RateLimiter
from kiln_service.idempotency import InFlightKeys
from kiln_service.logs import bind
from kiln_service.metrics import Metrics
from kiln_service.stores.artifacts import ArtifactStore
from kiln_service.stores.jobs import JobRecord, JobStore
from kiln_service.ui.session import CSRF_HEADER, csrf_ok, read_session

__all__ = [
    "ArtifactStoreDep",
    "CeleryDep",
    "JobStoreDep",
    "MetricsDep",
    "Services",
    "SettingsDep",
    "TenantDep",
    "ValidJobDep",
    "get_tenant",
]

DEFAULT_TENANT = "default"
HOW_TO_GET_A_KEY = (
    "Send an API key as `Authorization: Bearer <key>`. An operator creates one with "
    "`kiln-service keys create --tenant NAME` (the key is printed last on its line); "
    "`kiln-service up` writes a first key to the file api-key in its data folder. "
    "The SDK and the kiln CLI read KILN_API_KEY."
)
_bearer = HTTPBearer(auto_error=False, description="An API key from `kiln-service keys create`")


@dataclass
class Services:
    """Long-lived objects shared by all requests of one app."""

    settings: Settings
    job_store: JobStore
    artifact_store: ArtifactStore
    celery: Celery
    metrics: Metrics
    staging_dir: Path = field(default_factory=Path)
    """This process's own staging folder, ``{data_dir}/staging/<host>.<pid>``."""
    shared_state: SharedState | None = None
    """Where replicas share rate buckets and in-flight keys (default: Redis when the broker is
    Redis, else the job store)."""
    in_flight: InFlightKeys = field(init=False)
    """``Idempotency-Key`` values whose first request some API replica is still handling."""
    rate_limiter: RateLimiter = field(init=False)
    """Per-tenant submission buckets, shared by all replicas."""
    ui_secret: bytes = b""
    """Signs the dashboard's session cookies (see :mod:`kiln_service.ui.session`)."""

    def __post_init__(self) -> None:
        if self.shared_state is None:
            self.shared_state = open_shared_state(self.settings, self.job_store)
        self.in_flight = InFlightKeys(self.shared_state)
        self.rate_limiter = RateLimiter(self.shared_state, self.settings.rate_limit_per_minute)


def get_services(request: Request) -> Services:
    """Return the app's :class:`Services`."""
    services: Services = request.app.state.services
    return services


def get_job_store(request: Request) -> JobStore:
    """Return the job store."""
    return get_services(request).job_store


def get_artifact_store(request: Request) -> ArtifactStore:
    """Return the artifact store."""
    return get_services(request).artifact_store


def get_celery(request: Request) -> Celery:
    """Return the Celery app used to enqueue."""
    return get_services(request).celery


def get_metrics(request: Request) -> Metrics:
    """Return the metrics."""
    return get_services(request).metrics


def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Authenticate the caller's API key and return its tenant.

    Args:
        request: The request (for the app's settings and job store).
        credentials: The ``Authorization: Bearer`` credentials, if sent.

    Returns:
        The key's tenant, or ``default`` when ``KILN_AUTH=off``.

    Raises:
        UnauthorizedError: Auth is on and the key is missing, unknown or revoked (401).
        StoreError: The job store is unavailable (503).
    """
    services = get_services(request)
    if not services.settings.auth_enabled:
        bind(tenant=DEFAULT_TENANT)
        return DEFAULT_TENANT
    how = HOW_TO_GET_A_KEY
    if credentials is None or not credentials.credentials:
        tenant = _dashboard_tenant(request, services)
        if tenant is not None:
            return tenant
        raise UnauthorizedError(f"This Kiln requires an API key. {how}")
    tenant = services.job_store.authenticate_api_key(key=credentials.credentials)
    if tenant is None:
        raise UnauthorizedError(f"The API key is unknown or revoked. {how}")
    bind(tenant=tenant)
    return tenant


def _dashboard_tenant(request: Request, services: Services) -> str | None:
    """The tenant of a signed-in dashboard session, for the page's own API calls.

    A session's key must still be active; a request that changes something must also carry the
    session's CSRF token in ``X-CSRF-Token`` (a cookie alone is what a forged request has).
    """
    session = read_session(request, services.ui_secret)
    if session is None:
        return None
    if request.method not in ("GET", "HEAD") and not csrf_ok(
            services.ui_secret, session, request.headers.get(CSRF_HEADER)):
        raise UnauthorizedError("This request comes with a dashboard session but without its "
                                "CSRF token (X-CSRF-Token); reload the page and try again.")
    tenant = services.job_store.active_key_tenant(key_id=session.key_id)
    return tenant if tenant == session.tenant else None


SettingsDep = Annotated[Settings, Depends(get_settings)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
ArtifactStoreDep = Annotated[ArtifactStore, Depends(get_artifact_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
TenantDep = Annotated[str, Depends(get_tenant)]


def valid_job(job_id: str, store: JobStoreDep, tenant: TenantDep) -> JobRecord:
    """Return the job named in the path, scoped to the caller's tenant.

    Raises:
        JobNotFoundError: No such job for this tenant (404).
    """
    bind(job_id=job_id)
    return store.get_job(job_id=job_id, tenant=tenant)


ValidJobDep = Annotated[JobRecord, Depends(valid_job)]
