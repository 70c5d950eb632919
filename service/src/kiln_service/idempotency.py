"""``Idempotency-Key`` on ``POST /v1/compile``: a retried submission never starts a second job.

Same key and same request → the job the first request created (``Idempotent-Replayed: true``);
same key, another request → 422; same key while the first request is still being received or
checked by any API replica → 409. The request is identified by a digest of its meaning (form
fields and the sha256 of each file), not of its bytes: a client re-encoding a multipart body on
retry picks a new boundary, yet sends the same request.

The in-flight keys are leases in shared storage (Redis or the database, see
:mod:`kiln_service._shared_state`), renewed while the request runs; the job store's unique
(tenant, key) constraint stays the arbiter of which request created the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread

from kiln_service._shared_state import IN_FLIGHT_LEASE_SECONDS, SharedState
from kiln_service.errors import (
    BadRequestError,
    IdempotencyInFlightError,
    IdempotencyKeyReusedError,
)
from kiln_service.stores.jobs import JobRecord, JobStore
from kiln_service.uploads import ReceivedForm

__all__ = ["HEADER", "InFlightKeys", "check_key", "replay", "request_digest"]

logger = logging.getLogger(__name__)
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def check_key(raw: str | None) -> str | None:
    """Validate the header value.

    Args:
        raw: The ``Idempotency-Key`` header, or ``None``.

    Returns:
        The key, or ``None`` when the header is absent.

    Raises:
        BadRequestError: The key is empty, too long or not printable ASCII.
    """
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise BadRequestError(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, such as a UUID",
            code="invalid_idempotency_key",
        )
    return key


def request_digest(form: ReceivedForm) -> str:
    """A digest of what the request asks for: its text fields and the sha256 of its files."""
    meaning = {
        "fields": dict(sorted(form.fields.items())),
        "files": {name: f.sha256 for name, f in sorted(form.files.items())},
    }
    return hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()


def replay(store: JobStore, *, tenant: str, key: str, digest: str) -> JobRecord | None:
    """Return the job an earlier request with ``key`` created, if any.

    Raises:
        IdempotencyKeyReusedError: That earlier request asked for something else.
    """
    found = store.find_idempotent(tenant=tenant, key=key)
    if found is None:
        return None
    job, earlier_digest = found
    if earlier_digest != digest:
        raise IdempotencyKeyReusedError(
            f"{HEADER} {key!r} was already used for another request (job {job.id}); "
            "use a new key for a new submission"
        )
    return job


class InFlightKeys:
    """The (tenant, key) pairs whose first request some API replica is still handling.

    Args:
        state: The shared store of the leases.
        lease_seconds: How long a lease lasts unless renewed (renewed every third of it).
    """

    def __init__(self, state: SharedState, lease_seconds: float = IN_FLIGHT_LEASE_SECONDS) -> None:
        self.state, self.lease_seconds = state, lease_seconds

    @asynccontextmanager
    async def hold(self, tenant: str, key: str | None) -> AsyncIterator[None]:
        """Hold ``key`` in flight for the duration of the block.

        Raises:
            IdempotencyInFlightError: Another request with the key is in flight (409).
            StoreError, DependencyUnavailableError: The shared store failed (503).
        """
        if key is None:
            yield
            return
        holder = uuid.uuid4().hex
        claimed = await anyio.to_thread.run_sync(lambda: self.state.claim_in_flight(
            tenant=tenant, key=key, holder=holder, lease_seconds=self.lease_seconds))
        if not claimed:
            raise IdempotencyInFlightError(
                f"a request with {HEADER} {key!r} is still being processed; "
                "retry when it has finished")
        renewing = asyncio.get_running_loop().create_task(self._renew(tenant, key, holder))
        try:
            yield
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(lambda: self.state.release_in_flight(
                        tenant=tenant, key=key, holder=holder))
                except Exception as exc:  # the lease lapses by itself; keep the request's answer
                    logger.warning("could not release in-flight %s of tenant %s: %s", HEADER,
                                   tenant, exc)

    async def _renew(self, tenant: str, key: str, holder: str) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                held = await anyio.to_thread.run_sync(lambda: self.state.renew_in_flight(
                    tenant=tenant, key=key, holder=holder, lease_seconds=self.lease_seconds))
            except Exception as exc:  # the request goes on; the job store still arbitrates
                logger.warning("could not renew in-flight %s of tenant %s: %s", HEADER, tenant, exc)
                continue
            if not held:
                logger.warning("the in-flight %s lease of tenant %s lapsed", HEADER, tenant)
                return
