"""The durable side of webhooks: endpoints, fan-out of job events into deliveries, attempts.

Everything is a conditional ``UPDATE`` or a unique insert, so any number of API replicas can run
a sender over the same database: an event is fanned out by exactly one of them (the one whose
``UPDATE … SET dispatched`` wins), a delivery is attempted by the one whose claim wins, and a
claim lapses if its holder dies so that another replica retries it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from kiln_client.webhooks import WebhookDelivery, WebhookEndpoint, generate_secret
from kiln_service.errors import NotFoundError, StoreError
from kiln_service.stores._event_schema import job_events, webhook_deliveries, webhook_endpoints
from kiln_service.stores._schema import utcnow

__all__ = ["DueDelivery", "WebhookStore", "cloud_event"]

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
#: events a per-job webhook gets when the submission names none
DEFAULT_JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")


@dataclass(frozen=True)
class DueDelivery:
    """A delivery claimed for one attempt, with what is needed to send it."""

    id: str
    endpoint_id: str
    event_id: int
    url: str
    secret: str
    payload: str
    event_type: str
    attempts: int
    created_at: datetime


def cloud_event(event_id: int, event_type: str, job: dict[str, Any], time: datetime) -> str:
    """The delivery body: a CloudEvents 1.0 JSON event whose ``data.job`` is the job."""
    body = {
        "specversion": "1.0", "id": f"evt_{event_id}", "type": event_type,
        "source": f"/v1/jobs/{job['id']}", "subject": job["id"],
        "time": time.isoformat().replace("+00:00", "Z"), "datacontenttype": "application/json",
        "data": {"job": job},
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


class WebhookStore:
    """Webhook endpoints and deliveries in the job store's database.

    Args:
        engine: The job store's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"job store unavailable: {type(exc).__name__}: {exc}") from exc

    # -- endpoints --------------------------------------------------------------------------

    def create_endpoint(
        self, *, tenant: str, url: str, events: Sequence[str], description: str | None = None,
        job_id: str | None = None, secret: str | None = None,
    ) -> WebhookEndpoint:
        """Register an endpoint (``job_id``: the endpoint of one job) and return it with its secret."""
        values = {"id": f"ep_{uuid.uuid4().hex}", "tenant": tenant, "url": url,
                  "events": list(events), "secret": secret or generate_secret(),
                  "description": description, "job_id": job_id, "created_at": utcnow()}
        with self._tx() as conn:
            conn.execute(webhook_endpoints.insert().values(**values))
        return WebhookEndpoint.model_validate(values)

    def list_endpoints(self, *, tenant: str, job_id: str | None = None) -> list[WebhookEndpoint]:
        """The tenant's registered endpoints (or the endpoint of job ``job_id``), without secrets."""
        query = (select(webhook_endpoints).where(webhook_endpoints.c.tenant == tenant,
                                                 webhook_endpoints.c.job_id == job_id
                                                 if job_id else webhook_endpoints.c.job_id.is_(None))
                 .order_by(webhook_endpoints.c.created_at))
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [WebhookEndpoint.model_validate({**row, "secret": None}) for row in rows]

    def get_endpoint(self, *, tenant: str, endpoint_id: str, with_secret: bool = False) -> WebhookEndpoint:
        """One endpoint of the tenant.

        Raises:
            NotFoundError: No such endpoint for this tenant (404 ``webhook_not_found``).
        """
        query = select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id,
                                                webhook_endpoints.c.tenant == tenant)
        with self._tx() as conn:
            row = conn.execute(query).mappings().one_or_none()
        if row is None:
            raise NotFoundError(f"No webhook endpoint {endpoint_id!r}. List them with "
                                "GET /v1/webhooks.", code="webhook_not_found")
        return WebhookEndpoint.model_validate({**row, "secret": row["secret"] if with_secret else None})

    def delete_endpoint(self, *, tenant: str, endpoint_id: str) -> None:
        """Remove an endpoint; its pending deliveries are dropped."""
        self.get_endpoint(tenant=tenant, endpoint_id=endpoint_id)
        with self._tx() as conn:
            conn.execute(delete(webhook_deliveries).where(
                webhook_deliveries.c.endpoint_id == endpoint_id,
                webhook_deliveries.c.status == PENDING))
            conn.execute(delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id))

    # -- fan-out and attempts ---------------------------------------------------------------

    def dispatch_events(self, *, limit: int = 200) -> int:
        """Turn new job events into deliveries for the endpoints that want them.

        Returns:
            How many deliveries were created.
        """
        with self._tx() as conn:
            events = conn.execute(
                select(job_events).where(job_events.c.dispatched.is_(False))
                .order_by(job_events.c.id).limit(limit)).mappings().all()
        created = 0
        for event in events:
            with self._tx() as conn:
                won = conn.execute(update(job_events).where(
                    job_events.c.id == event["id"], job_events.c.dispatched.is_(False))
                    .values(dispatched=True)).rowcount
                if won:
                    created += self._fan_out(conn, event)
        return created

    def _fan_out(self, conn: Connection, event: Any) -> int:
        endpoints = conn.execute(select(webhook_endpoints.c.id, webhook_endpoints.c.events).where(
            webhook_endpoints.c.tenant == event["tenant"],
            or_(webhook_endpoints.c.job_id.is_(None), webhook_endpoints.c.job_id == event["job_id"]),
        )).all()
        wanted = [ep_id for ep_id, events in endpoints if not events or event["type"] in events]
        if not wanted:
            return 0
        now = utcnow()
        payload = cloud_event(event["id"], event["type"], event["job"], event["created_at"])
        conn.execute(webhook_deliveries.insert(), [{
            "id": f"msg_{uuid.uuid4().hex}", "event_id": event["id"], "endpoint_id": ep_id,
            "tenant": event["tenant"], "job_id": event["job_id"], "event_type": event["type"],
            "payload": payload, "status": PENDING, "attempts": 0, "next_attempt_at": now,
            "created_at": event["created_at"], "updated_at": now,
        } for ep_id in wanted])
        return len(wanted)

    def claim_due(self, *, limit: int = 20, lease_seconds: float = 60.0) -> list[DueDelivery]:
        """Claim deliveries whose attempt is due (and not held by a live claim elsewhere)."""
        now = utcnow()
        due = (webhook_deliveries.c.status == PENDING, webhook_deliveries.c.next_attempt_at <= now,
               or_(webhook_deliveries.c.claimed_until.is_(None),
                   webhook_deliveries.c.claimed_until < now))
        query = (select(webhook_deliveries, webhook_endpoints.c.url, webhook_endpoints.c.secret)
                 .join(webhook_endpoints, webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id)
                 .where(*due).order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.event_id)
                 .limit(limit))
        claimed: list[DueDelivery] = []
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
            for row in rows:
                won = conn.execute(update(webhook_deliveries).where(
                    webhook_deliveries.c.id == row["id"], *due)
                    .values(claimed_until=now + timedelta(seconds=lease_seconds))).rowcount
                if won:
                    claimed.append(DueDelivery(
                        row["id"], row["endpoint_id"], row["event_id"], row["url"], row["secret"],
                        row["payload"], row["event_type"], row["attempts"], row["created_at"]))
        return claimed

    def record_attempt(
        self, *, delivery_id: str, ok: bool, response_code: int | None, error: str | None,
        retry_in: float, give_up_at: datetime,
    ) -> str:
        """Record one attempt: ``succeeded``, or ``pending`` again after ``retry_in`` seconds,
        or ``failed`` once the next attempt would fall after ``give_up_at``.

        Returns:
            The delivery's new status.
        """
        now = utcnow()
        next_at = now + timedelta(seconds=retry_in)
        status = SUCCEEDED if ok else (FAILED if next_at > give_up_at else PENDING)
        with self._tx() as conn:
            conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
                         .values(status=status, attempts=webhook_deliveries.c.attempts + 1,
                                 last_response_code=response_code, last_error=error,
                                 next_attempt_at=next_at if status == PENDING else now,
                                 claimed_until=None, updated_at=now))
        return status

    def prune(self, *, older_than: datetime) -> int:
        """Delete dispatched job events and finished deliveries last changed before ``older_than``.

        Pending deliveries are kept whatever their age (the sender still owes them), and so is
        the event each one was made from.

        Returns:
            How many rows were deleted.
        """
        finished = (webhook_deliveries.c.status != PENDING,
                    webhook_deliveries.c.updated_at < older_than)
        owed = select(webhook_deliveries.c.event_id).where(webhook_deliveries.c.status == PENDING)
        with self._tx() as conn:
            deliveries = conn.execute(delete(webhook_deliveries).where(*finished)).rowcount
            events = conn.execute(delete(job_events).where(
                job_events.c.dispatched.is_(True), job_events.c.created_at < older_than,
                job_events.c.id.not_in(owed))).rowcount
        return int(deliveries or 0) + int(events or 0)

    def list_deliveries(self, *, tenant: str, endpoint_id: str, limit: int = 100) -> list[WebhookDelivery]:
        """The endpoint's deliveries, newest first."""
        self.get_endpoint(tenant=tenant, endpoint_id=endpoint_id)
        query = (select(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id)
                 .order_by(webhook_deliveries.c.created_at.desc(), webhook_deliveries.c.event_id.desc())
                 .limit(limit))
        with self._tx() as conn:
            return [_delivery(row) for row in conn.execute(query).mappings()]

    def redeliver(self, *, tenant: str, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
        """Send a delivery again now (same ``webhook-id``), whatever its status; a fresh 24 h.

        Raises:
            NotFoundError: No such delivery on this endpoint.
        """
        self.get_endpoint(tenant=tenant, endpoint_id=endpoint_id)
        now = utcnow()
        where = (webhook_deliveries.c.id == delivery_id,
                 webhook_deliveries.c.endpoint_id == endpoint_id)
        with self._tx() as conn:
            done = conn.execute(update(webhook_deliveries).where(*where).values(
                status=PENDING, next_attempt_at=now, claimed_until=None, updated_at=now,
                created_at=now)).rowcount
            row = conn.execute(select(webhook_deliveries).where(*where)).mappings().one_or_none()
        if not done or row is None:
            raise NotFoundError(f"No delivery {delivery_id!r} on endpoint {endpoint_id!r}. List "
                                f"them with GET /v1/webhooks/{endpoint_id}/deliveries.",
                                code="delivery_not_found")
        return _delivery(row)


def _delivery(row: Any) -> WebhookDelivery:
    data = dict(row)
    if data["status"] != PENDING:
        data["next_attempt_at"] = None
    return WebhookDelivery.model_validate(data)

