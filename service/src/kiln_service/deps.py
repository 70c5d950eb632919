"""FastAPI dependencies: settings, stores, queue and metrics, as ``Annotated`` aliases.

The stores live on ``app.state.services`` (built by :func:`kiln_service.main.create_app`); a
tenant dependency is where API-key authentication will plug in (every store call takes
``tenant``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from kiln_service.config import Settings, get_settings
from kiln_service.idempotency import InFlightKeys
from kiln_service.metrics import Metrics
from kiln_service.stores.artifacts import ArtifactStore
from kiln_service.stores.jobs import JobRecord, JobStore

__all__ = [
    "ArtifactStoreDep",
    "CeleryDep",
    "JobStoreDep",
    "MetricsDep",
    "Services",
    "SettingsDep",
    "TenantDep",
    "ValidJobDep",
]

DEFAULT_TENANT = "default"


@dataclass
class Services:
    """Long-lived objects shared by all requests of one app."""

    settings: Settings
    job_store: JobStore
    artifact_store: ArtifactStore
    celery: Celery
    metrics: Metrics
    in_flight: InFlightKeys = field(default_factory=InFlightKeys)
    """``Idempotency-Key`` values whose first request this process is still handling."""


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


def get_tenant() -> str:
    """Return the caller's tenant (one tenant until API keys arrive)."""
    return DEFAULT_TENANT


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
    return store.get_job(job_id=job_id, tenant=tenant)


ValidJobDep = Annotated[JobRecord, Depends(valid_job)]
