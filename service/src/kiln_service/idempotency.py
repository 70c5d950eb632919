"""``Idempotency-Key`` on ``POST /v1/compile``: a retried submission never starts a second job.

Same key and same request → the job the first request created (``Idempotent-Replayed: true``);
same key, another request → 422; same key while the first request is still being received or
checked by this API process → 409. The request is identified by a digest of its meaning (form
fields and the sha256 of each file), not of its bytes: a client re-encoding a multipart body on
retry picks a new boundary, yet sends the same request.

The job store's unique (tenant, key) constraint is the arbiter across API processes; the
in-flight set only answers 409 for requests this process is still handling.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kiln_service.errors import (
    BadRequestError,
    IdempotencyInFlightError,
    IdempotencyKeyReusedError,
)
from kiln_service.stores.jobs import JobRecord, JobStore
from kiln_service.uploads import ReceivedForm

__all__ = ["HEADER", "InFlightKeys", "check_key", "replay", "request_digest"]

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
    """The (tenant, key) pairs whose first request this process is still handling."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[tuple[str, str]] = set()

    @contextmanager
    def hold(self, tenant: str, key: str | None) -> Iterator[None]:
        """Mark ``key`` in flight for the duration of the block.

        Raises:
            IdempotencyInFlightError: Another request with the key is in flight.
        """
        if key is None:
            yield
            return
        with self._lock:
            if (tenant, key) in self._keys:
                raise IdempotencyInFlightError(
                    f"a request with {HEADER} {key!r} is still being processed; "
                    "retry when it has finished"
                )
            self._keys.add((tenant, key))
        try:
            yield
        finally:
            with self._lock:
                self._keys.discard((tenant, key))
