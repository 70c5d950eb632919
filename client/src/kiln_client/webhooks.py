"""Kiln's webhooks, as the Standard Webhooks specification defines them.

Each delivery is a ``POST`` of a CloudEvents-shaped JSON body holding the job::

    {"specversion": "1.0", "id": "evt_42", "type": "job.succeeded", "source": "/v1/jobs/<id>",
     "subject": "<job id>", "time": "2026-11-29T02:00:00Z", "datacontenttype": "application/json",
     "data": {"job": {...}}}

with three headers: ``webhook-id`` (the same on every retry of one delivery: use it to drop
duplicates), ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed by the endpoint's secret
``whsec_<base64 key>``). Check a delivery with :func:`verify` before trusting it::

    from kiln_client import webhooks

    event = webhooks.verify(request_body, request_headers, secret)   # raises if forged or old
    if event["type"] == "job.succeeded": ...

This module needs only the standard library and pydantic.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from kiln_client.errors import KilnError

__all__ = [
    "EVENT_TYPES",
    "SECRET_PREFIX",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookVerificationError",
    "generate_secret",
    "sign",
    "verify",
]

#: the events a webhook may ask for (all of them when it names none)
EVENT_TYPES: tuple[str, ...] = ("job.running", "job.stage", "job.succeeded", "job.failed",
                                "job.cancelled")
SECRET_PREFIX = "whsec_"
#: how far a delivery's timestamp may be from the receiver's clock (the specification's 5 min)
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(KilnError, ValueError):
    """A webhook delivery is not authentic: a missing header, a bad signature or an old timestamp."""


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError(
            "the webhook secret must be 'whsec_' followed by base64 (as Kiln gave it)") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value of one delivery: ``v1,<base64 HMAC-SHA256>``.

    Args:
        secret: The endpoint's ``whsec_…`` secret.
        msg_id: The ``webhook-id``.
        timestamp: The ``webhook-timestamp`` (Unix seconds).
        body: The exact request body.

    Returns:
        The signature header value.
    """
    payload = body.encode() if isinstance(body, str) else body
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a webhook delivery and return its parsed body.

    Args:
        payload: The raw request body, exactly as received (not re-serialised JSON).
        headers: The request headers (any letter case).
        secret: The endpoint's ``whsec_…`` secret.
        tolerance_seconds: Largest accepted difference between ``webhook-timestamp`` and now.
        now: The current Unix time (default: the clock).

    Returns:
        The event (``type``, ``data.job`` …).

    Raises:
        WebhookVerificationError: A header is missing, the timestamp is too old or too new, or no
            signature matches.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not lower.get(h)]
    if missing:
        raise WebhookVerificationError(f"missing webhook header(s): {', '.join(missing)}")
    try:
        timestamp = int(lower["webhook-timestamp"])
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds") from exc
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'in the future'} "
            f"(more than {tolerance_seconds} s): a replay, or a clock out of sync")
    expected = sign(secret, lower["webhook-id"], timestamp, payload).encode()
    for candidate in lower["webhook-signature"].split():
        if hmac.compare_digest(candidate.encode(), expected):
            body = payload.decode() if isinstance(payload, bytes) else payload
            event: dict[str, Any] = json.loads(body)
            return event
    raise WebhookVerificationError("no webhook-signature matches: a wrong secret, or a body "
                                   "changed on the way (verify the raw bytes, before parsing)")


class WebhookEndpoint(BaseModel):
    """A registered webhook endpoint (or the endpoint of one job's ``webhook_url``)."""

    id: str
    """Endpoint id (``ep_…``)."""
    url: str
    """Where deliveries are POSTed."""
    events: list[str] = Field(default_factory=list)
    """Event types sent; empty means all of :data:`EVENT_TYPES`."""
    description: str | None = None
    """Free text."""
    job_id: str | None = None
    """Set for the endpoint of one job's ``webhook_url``."""
    created_at: datetime
    """When it was registered."""
    secret: str | None = None
    """The ``whsec_…`` signing secret (only in the answer that creates it, and from ``…/secret``)."""


class WebhookDelivery(BaseModel):
    """One event sent (or being sent) to one endpoint."""

    id: str
    """The ``webhook-id`` header, the same on every attempt."""
    endpoint_id: str
    """The endpoint."""
    job_id: str
    """The job the event is about."""
    event_type: str
    """Such as ``job.succeeded``."""
    status: str
    """``pending`` (retrying), ``succeeded`` or ``failed`` (gave up after 24 h)."""
    attempts: int
    """Attempts made so far."""
    last_response_code: int | None = None
    """HTTP status of the last attempt (``None``: no answer)."""
    last_error: str | None = None
    """Why the last attempt failed, if it did."""
    next_attempt_at: datetime | None = None
    """When the next attempt is due, while pending."""
    created_at: datetime
    """When the delivery was created (or redelivered on request); retries stop 24 h later."""
