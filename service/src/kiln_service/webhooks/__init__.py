"""Webhooks (Standard Webhooks): endpoints per tenant and per job, a durable background sender.

* :mod:`.urls`: which URLs may be called (http(s), no internal addresses unless allowed);
* :mod:`.store`: endpoints, fan-out of job events into deliveries, attempts (in the job store);
* :mod:`.sender`: the loop each API process runs in its lifespan.

Signing and verification live in :mod:`kiln_client.webhooks`, shared with receivers.
"""

from __future__ import annotations

from kiln_client.models import CompileRequest
from kiln_client.webhooks import EVENT_TYPES, SECRET_PREFIX, WebhookVerificationError, sign
from kiln_service.config import Settings
from kiln_service.webhooks.store import DEFAULT_JOB_EVENTS, WebhookStore
from kiln_service.webhooks.urls import WebhookURLError, check_webhook_url

__all__ = ["check_events", "check_job_webhook", "register_job_webhook"]


def check_events(events: list[str] | None) -> list[str]:
    """Validate event names (``None``/empty: all).

    Raises:
        WebhookURLError: An unknown event name (422), listing the known ones.
    """
    unknown = [e for e in events or [] if e not in EVENT_TYPES]
    if unknown:
        raise WebhookURLError(f"unknown webhook event(s) {', '.join(unknown)}; known events: "
                              f"{', '.join(EVENT_TYPES)}", code="invalid_webhook_events")
    return list(dict.fromkeys(events or []))


def check_secret(secret: str | None) -> str | None:
    """Validate a caller-chosen ``whsec_…`` secret (``None``: one is generated).

    Raises:
        WebhookURLError: Not ``whsec_`` + base64 of 24 to 64 bytes (422).
    """
    if secret is None:
        return None
    try:
        sign(secret, "check", 0, b"")
        ok = secret.startswith(SECRET_PREFIX) and 32 <= len(secret) - len(SECRET_PREFIX) <= 88
    except WebhookVerificationError:
        ok = False
    if not ok:
        raise WebhookURLError("webhook_secret must be 'whsec_' followed by the base64 of 24 to 64 "
                              "random bytes (or leave it out and Kiln makes one)",
                              code="invalid_webhook_secret")
    return secret


def check_job_webhook(req: CompileRequest, settings: Settings) -> None:
    """Check the webhook fields of a submission before anything is stored (422 when bad)."""
    if req.webhook_url is None:
        if req.webhook_events or req.webhook_secret:
            raise WebhookURLError("webhook_events and webhook_secret need a webhook_url")
        return
    check_webhook_url(req.webhook_url, allow_private=settings.webhook_allow_private_urls)
    check_events(req.webhook_events)
    check_secret(req.webhook_secret)


def register_job_webhook(store: WebhookStore, *, job_id: str, tenant: str,
                         req: CompileRequest) -> str | None:
    """Create the endpoint of a job submitted with ``webhook_url`` (before it is queued).

    Returns:
        The endpoint's id, ``None`` without ``webhook_url``.
    """
    if req.webhook_url is None:
        return None
    return store.create_endpoint(tenant=tenant, url=req.webhook_url.strip(), job_id=job_id,
                                 events=check_events(req.webhook_events) or list(DEFAULT_JOB_EVENTS),
                                 secret=req.webhook_secret).id
