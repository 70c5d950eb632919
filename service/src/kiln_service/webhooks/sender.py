"""The background webhook sender: fan events out, attempt due deliveries, back off, give up.

It runs as a task in each API process's lifespan (:func:`run_sender`), never in a request. Each
pass turns new job events into deliveries and sends the deliveries that are due; the job store
keeps every step, so a restarted API (or another replica) carries on where this one stopped, and
a receiver sees each delivery at least once, always under the same ``webhook-id``.
Retries back off exponentially (``KILN_WEBHOOK_RETRY_BASE_SECONDS`` doubling up to
``KILN_WEBHOOK_RETRY_MAX_SECONDS``) until ``KILN_WEBHOOK_GIVE_UP_SECONDS`` (24 h) after the event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial

import anyio
import anyio.to_thread
import httpx

from kiln_client.webhooks import sign
from kiln_service.config import Settings
from kiln_service.errors import StoreError
from kiln_service.stores._schema import utcnow
from kiln_service.webhooks.store import SUCCEEDED, DueDelivery, WebhookStore
from kiln_service.webhooks.urls import WebhookURLError, pin_webhook_url

__all__ = ["WebhookSender", "backoff_seconds", "run_sender"]

logger = logging.getLogger(__name__)
Outcome = Callable[[str], None]
"""Called with each attempt's outcome (``succeeded``, ``retrying``, ``failed``), for metrics."""


def backoff_seconds(attempts: int, *, base: float, cap: float) -> float:
    """Delay after the ``attempts``-th failed attempt: ``base``, doubling, at most ``cap``."""
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))


class WebhookSender:
    """One sender over the webhook store.

    Args:
        store: The webhook store.
        settings: Timeouts, backoff, and whether private addresses may be called.
        on_outcome: Called with the outcome of each attempt.
    """

    def __init__(self, store: WebhookStore, settings: Settings,
                 on_outcome: Outcome | None = None) -> None:
        self.store = store
        self.settings = settings
        self.on_outcome = on_outcome
        self._next_prune = 0.0

    async def _prune_now_and_then(self) -> None:
        """Delete old events and finished deliveries, at most once an hour per process."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 3600
        cutoff = utcnow() - timedelta(days=self.settings.event_retention_days)
        deleted = await anyio.to_thread.run_sync(partial(self.store.prune, older_than=cutoff))
        if deleted:
            logger.info("pruned %d job events and webhook deliveries older than %s",
                        deleted, cutoff.isoformat())

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Fan out new events, then attempt every due delivery once.

        Returns:
            How many attempts were made.
        """
        await anyio.to_thread.run_sync(partial(self.store.dispatch_events))
        await self._prune_now_and_then()
        lease = self.settings.webhook_timeout_seconds * 3 + 30
        due = await anyio.to_thread.run_sync(partial(self.store.claim_due, lease_seconds=lease))
        # One endpoint's deliveries go in event order, one at a time; endpoints in parallel.
        by_endpoint: dict[str, list[DueDelivery]] = {}
        for delivery in sorted(due, key=lambda d: d.event_id):
            by_endpoint.setdefault(delivery.endpoint_id, []).append(delivery)
        async with anyio.create_task_group() as group:
            for deliveries in by_endpoint.values():
                group.start_soon(self._attempt_in_order, client, deliveries)
        return len(due)

    async def _attempt_in_order(self, client: httpx.AsyncClient, deliveries: list[DueDelivery]) -> None:
        for delivery in deliveries:
            await self._attempt(client, delivery)

    async def _attempt(self, client: httpx.AsyncClient, delivery: DueDelivery) -> None:
        code, error = await self._post(client, delivery)
        ok = code is not None and 200 <= code < 300
        settings = self.settings
        retry_in = backoff_seconds(delivery.attempts + 1, base=settings.webhook_retry_base_seconds,
                                   cap=settings.webhook_retry_max_seconds)
        give_up_at = delivery.created_at + timedelta(seconds=settings.webhook_give_up_seconds)
        status = await anyio.to_thread.run_sync(partial(
            self.store.record_attempt, delivery_id=delivery.id, ok=ok, response_code=code,
            error=error, retry_in=retry_in, give_up_at=give_up_at))
        outcome = "retrying" if status == "pending" else status
        logger.log(logging.INFO if status == SUCCEEDED else logging.WARNING,
                   "webhook %s (%s) attempt %d: %s → %s", delivery.id, delivery.event_type,
                   delivery.attempts + 1, code if code is not None else error, outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _post(self, client: httpx.AsyncClient, delivery: DueDelivery) -> tuple[int | None, str | None]:
        allow = self.settings.webhook_allow_private_urls
        try:
            target = await anyio.to_thread.run_sync(partial(pin_webhook_url, delivery.url,
                                                            allow_private=allow))
        except WebhookURLError as exc:
            return None, exc.detail
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json", "user-agent": "kiln-webhooks/1",
            "webhook-id": delivery.id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(delivery.secret, delivery.id, timestamp, delivery.payload),
            **target.headers,
        }
        try:
            response = await client.post(target.url, content=delivery.payload.encode(),
                                         headers=headers, extensions=target.extensions,
                                         timeout=self.settings.webhook_timeout_seconds)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"the receiver answered HTTP {response.status_code}"


async def run_sender(sender: WebhookSender, poll_seconds: float) -> None:
    """Run :meth:`WebhookSender.run_once` every ``poll_seconds`` until cancelled."""
    # Redirects are not followed: a redirect could lead to an address the URL check refused.
    async with httpx.AsyncClient(follow_redirects=False) as client:
        while True:
            try:
                busy = await sender.run_once(client)
            except StoreError as exc:
                logger.warning("webhook sender: job store unavailable: %s", exc.detail)
                busy = 0
            except Exception:  # never let the loop die; the next pass may work
                logger.exception("webhook sender pass failed")
                busy = 0
            if not busy:
                await anyio.sleep(poll_seconds)
