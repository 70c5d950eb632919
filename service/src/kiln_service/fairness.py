"""Fairness between tenants: a submission rate limit and a cap on unfinished jobs.

* The rate limit is a token bucket per tenant held **in this API process**: with N API
  processes behind a load balancer a tenant may submit up to N times the configured rate.
  That is the accepted trade-off for not adding a shared counter service.
* The cap on unfinished (queued + running) jobs is counted in the job store, so it holds across
  all API processes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from kiln_service.errors import TooManyRequestsError
from kiln_service.stores.jobs import JobStore

__all__ = ["ACTIVE_JOBS_RETRY_AFTER", "TokenBuckets", "check_active_jobs"]

#: seconds a tenant at its active-jobs cap is told to wait (jobs typically take minutes)
ACTIVE_JOBS_RETRY_AFTER = 30


class TokenBuckets:
    """One token bucket per tenant: ``per_minute`` tokens, refilled continuously.

    A full bucket allows a burst of ``per_minute`` submissions; after that one more every
    ``60 / per_minute`` seconds. Thread-safe (sync routes run in a thread pool).

    Args:
        per_minute: Tokens per minute and bucket size; 0 turns the limit off.
        clock: Monotonic clock in seconds (tests may pass their own).
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill)

    def take(self, tenant: str) -> float:
        """Take one token for ``tenant``.

        Args:
            tenant: The caller's tenant.

        Returns:
            0.0 when a token was taken, else the seconds until one is available.
        """
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(tenant, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[tenant] = (tokens - 1.0, now)
                return 0.0
            self._buckets[tenant] = (tokens, now)
            return (1.0 - tokens) / rate

    def check(self, tenant: str) -> None:
        """Take a token or refuse the request.

        Args:
            tenant: The caller's tenant.

        Raises:
            TooManyRequestsError: The bucket is empty (429 with ``Retry-After``).
        """
        wait = self.take(tenant)
        if wait > 0:
            raise TooManyRequestsError(
                f"tenant {tenant!r} may submit {self.per_minute} jobs per minute "
                f"(KILN_RATE_LIMIT_PER_MINUTE); retry in {math.ceil(wait)} s",
                retry_after=math.ceil(wait), code="rate_limited")


def check_active_jobs(store: JobStore, *, tenant: str, limit: int) -> None:
    """Refuse a submission when ``tenant`` already has ``limit`` unfinished jobs.

    Checked before the upload is received; submissions racing each other may each pass, so the
    cap can be overshot by the number of submissions in flight at that moment.

    Args:
        store: The job store (the count is shared by all API processes).
        tenant: The caller's tenant.
        limit: Most queued + running jobs; 0 turns the cap off.

    Raises:
        TooManyRequestsError: The cap is reached (429 ``too_many_active_jobs``).
        StoreError: The database failed.
    """
    if limit <= 0:
        return
    active = store.count_active_jobs(tenant=tenant)
    if active >= limit:
        raise TooManyRequestsError(
            f"tenant {tenant!r} already has {active} unfinished jobs (queued or running), the "
            f"most allowed (KILN_MAX_ACTIVE_JOBS_PER_TENANT={limit}); wait for some to finish "
            "or cancel them (POST /v1/jobs/{id}/cancel)",
            retry_after=ACTIVE_JOBS_RETRY_AFTER, code="too_many_active_jobs")
