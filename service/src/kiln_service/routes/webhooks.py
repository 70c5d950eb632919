"""Webhook routes: register, list, read and delete endpoints; list and redeliver deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from kiln_client.webhooks import WebhookDelivery, WebhookEndpoint
from kiln_service.deps import SettingsDep, TenantDep, ValidJobDep, get_services
from kiln_service.errors import NotFoundError
from kiln_service.webhooks import check_events, check_secret
from kiln_service.webhooks.store import WebhookStore
from kiln_service.webhooks.urls import check_webhook_url

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["webhooks"])


def get_webhook_store(request: Request) -> WebhookStore:
    """The webhook store over the app's job store."""
    return WebhookStore(get_services(request).job_store.engine)


WebhookStoreDep = Annotated[WebhookStore, Depends(get_webhook_store)]


class EndpointCreate(BaseModel):
    """The body of ``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: str
    """An http(s) URL on a public address."""
    events: list[str] = Field(default_factory=list)
    """Event types to send; empty means all."""
    description: str | None = Field(default=None, max_length=256)
    """Free text."""
    secret: str | None = None
    """A ``whsec_…`` secret of your own; one is generated when omitted."""


@router.post("/webhooks", status_code=201, response_model=WebhookEndpoint,
             summary="Register a webhook endpoint for all of the tenant's jobs")
def create_webhook(body: EndpointCreate, store: WebhookStoreDep, tenant: TenantDep,
                   settings: SettingsDep) -> WebhookEndpoint:
    """Register an endpoint; the answer holds its signing secret (also at ``…/secret``)."""
    url = check_webhook_url(body.url, allow_private=settings.webhook_allow_private_urls)
    return store.create_endpoint(tenant=tenant, url=url, events=check_events(body.events),
                                 description=body.description, secret=check_secret(body.secret))


@router.get("/webhooks", response_model=list[WebhookEndpoint], summary="List webhook endpoints")
def list_webhooks(store: WebhookStoreDep, tenant: TenantDep) -> list[WebhookEndpoint]:
    """The tenant's registered endpoints (secrets left out)."""
    return store.list_endpoints(tenant=tenant)


@router.get("/webhooks/{endpoint_id}", response_model=WebhookEndpoint, summary="Read an endpoint")
def read_webhook(endpoint_id: str, store: WebhookStoreDep, tenant: TenantDep) -> WebhookEndpoint:
    """One endpoint (secret left out)."""
    return store.get_endpoint(tenant=tenant, endpoint_id=endpoint_id)


@router.get("/webhooks/{endpoint_id}/secret", response_model=WebhookEndpoint,
            summary="Read an endpoint with its signing secret")
def read_webhook_secret(endpoint_id: str, store: WebhookStoreDep, tenant: TenantDep) -> WebhookEndpoint:
    """One endpoint with its ``whsec_…`` secret."""
    return store.get_endpoint(tenant=tenant, endpoint_id=endpoint_id, with_secret=True)


@router.delete("/webhooks/{endpoint_id}", status_code=204, summary="Delete an endpoint")
def delete_webhook(endpoint_id: str, store: WebhookStoreDep, tenant: TenantDep) -> Response:
    """Delete an endpoint; its pending deliveries are dropped."""
    store.delete_endpoint(tenant=tenant, endpoint_id=endpoint_id)
    return Response(status_code=204)


@router.get("/webhooks/{endpoint_id}/deliveries", response_model=list[WebhookDelivery],
            summary="List an endpoint's deliveries")
def list_deliveries(
    endpoint_id: str, store: WebhookStoreDep, tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[WebhookDelivery]:
    """The endpoint's deliveries, newest first, with status, attempts and last response code."""
    return store.list_deliveries(tenant=tenant, endpoint_id=endpoint_id, limit=limit)


@router.post("/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver", status_code=202,
             response_model=WebhookDelivery, summary="Send a delivery again")
def redeliver(endpoint_id: str, delivery_id: str, store: WebhookStoreDep,
              tenant: TenantDep) -> WebhookDelivery:
    """Queue the delivery for a new attempt now, under the same ``webhook-id``."""
    return store.redeliver(tenant=tenant, endpoint_id=endpoint_id, delivery_id=delivery_id)


@router.get("/jobs/{job_id}/webhook", response_model=WebhookEndpoint,
            summary="Read the webhook endpoint of a job, with its secret")
def read_job_webhook(job: ValidJobDep, store: WebhookStoreDep, tenant: TenantDep) -> WebhookEndpoint:
    """The endpoint made from the job's ``webhook_url`` (404 when it was submitted without one)."""
    found = store.list_endpoints(tenant=tenant, job_id=job.id)
    if not found:
        raise NotFoundError(f"job {job.id} was submitted without a webhook_url",
                            code="webhook_not_found")
    return store.get_endpoint(tenant=tenant, endpoint_id=found[0].id, with_secret=True)
