"""Fairness between tenants: a submission rate limit and a cap on unfinished jobs.

Both hold across all API replicas:

* The rate limit is a token bucket per tenant (:func:`~kiln_service._shared_state.gcra`) kept in
  shared storage: Redis when the broker is Redis, else the job store's database.
* The cap on unfinished (queued + running) jobs is counted in the job store.
"""

from __future__ import annotations

import math

from kiln_service._shared_state import SharedState
from kiln_service.errors import TooManyRequestsError
from kiln_service.stores.jobs import JobStore

__all__ = ["ACTIVE_JOBS_RETRY_AFTER", "RateLimiter", "check_active_jobs"]

#: seconds a tenant at its active-jobs cap is told to wait (jobs typically take minutes)
ACTIVE_JOBS_RETRY_AFTER = 30


class RateLimiter:
    """``per_minute`` submissions per tenant, bursts up to that many, for all replicas at once.

    Args:
        state: The shared store of the buckets.
        per_minute: Tokens per minute and bucket size; 0 turns the limit off.
    """

    def __init__(self, state: SharedState, per_minute: int) -> None:
        self.state, self.per_minute = state, per_minute

    def check(self, tenant: str) -> None:
        """Take a token or refuse the request (blocking I/O: call it from a thread).

        Args:
            tenant: The caller's tenant.

        Raises:
            TooManyRequestsError: The bucket is empty (429 with ``Retry-After``).
            StoreError: The database failed (503).
            DependencyUnavailableError: Redis is unreachable (503).
        """
        if self.per_minute <= 0:
            return
        wait = self.state.take_rate_token(tenant=tenant, per_minute=self.per_minute)
        if wait > 0:
            raise TooManyRequestsError(
                f"tenant {tenant!r} may submit {self.per_minute} jobs per minute "
                f"(KILN_RATE_LIMIT_PER_MINUTE, counted across all API replicas); retry in "
                f"{math.ceil(wait)} s", retry_after=math.ceil(wait), code="rate_limited")


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
