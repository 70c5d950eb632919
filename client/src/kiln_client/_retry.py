"""When and how long to wait before retrying a request.

Retried: connection errors (refused, dropped, timed out), 408, 409 with ``Retry-After``, 429 and
5xx answers, but only for requests that are safe to repeat: ``GET``/``HEAD``/``DELETE``/``PUT``,
requests the caller marks idempotent (cancel), and ``POST``s that carry an ``Idempotency-Key``
(compile), which the service deduplicates. Waits grow exponentially with full jitter and honour
the server's ``Retry-After`` header (seconds or an HTTP date).
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass

import httpx

__all__ = ["IDEMPOTENCY_HEADER", "RetryPolicy"]

IDEMPOTENCY_HEADER = "Idempotency-Key"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: the service's code for "a request with this Idempotency-Key is still being handled"
_IN_FLIGHT = "idempotency_key_in_flight"
#: a Retry-After above this is not worth blocking a caller for; the error is raised instead
_MAX_RETRY_AFTER = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff settings.

    Attributes:
        max_retries: retries after the first attempt (0 disables retrying).
        initial_delay: the first backoff ceiling in seconds.
        max_delay: the largest backoff in seconds (Retry-After may ask for more).
    """

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0

    def can_repeat(self, request: httpx.Request, *, idempotent: bool = False) -> bool:
        """Whether ``request`` may be sent again without side effects.

        Args:
            request: the request about to be retried.
            idempotent: the caller knows this endpoint is idempotent.

        Returns:
            True for safe methods, idempotent endpoints and POSTs with an idempotency key.
        """
        if idempotent or request.method in _SAFE_METHODS:
            return True
        return IDEMPOTENCY_HEADER.lower() in request.headers

    def should_retry_response(self, response: httpx.Response) -> bool:
        """Whether an answer's status is worth another try (429, 5xx, 408).

        Args:
            response: the answer received.

        Returns:
            True when the status is transient; a 409 with ``Retry-After`` or the code
            ``idempotency_key_in_flight`` also counts (the same key is still being processed).
        """
        if response.status_code in _RETRY_STATUSES:
            return True
        if response.status_code != 409:
            return False
        return "retry-after" in response.headers or _problem_code(response) == _IN_FLIGHT

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (0-based).

        Args:
            attempt: how many retries were made already.
            response: the answer that caused the retry, to read ``Retry-After`` from.

        Returns:
            The server's ``Retry-After`` when given (and sane), else exponential backoff with
            full jitter.
        """
        if response is not None:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None and 0 <= retry_after <= _MAX_RETRY_AFTER:
                return retry_after
        ceiling = min(self.max_delay, self.initial_delay * (2**attempt))
        # Full jitter: spread clients that failed together so they do not retry together.
        return random.uniform(ceiling / 2, ceiling)


def _problem_code(response: httpx.Response) -> str | None:
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP date.

    Args:
        value: the raw header, or ``None``.

    Returns:
        Seconds to wait, or ``None`` when absent or unparsable.
    """
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())
