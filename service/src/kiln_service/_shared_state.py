"""State every API replica must see alike: per-tenant submission rates and in-flight keys.

Two stores keep it: Redis when the broker is Redis (:class:`RedisState`, one round trip per
check, Redis's own clock), else the job store's database (``rate_limits`` and
``in_flight_requests`` tables, see :mod:`kiln_service.stores._limits`), so the embedded default
still needs no server. Both run the same rate rule, :func:`gcra`, on one number per tenant.

An in-flight ``Idempotency-Key`` is a lease: claimed when a request with the key starts, renewed
while it runs, released when it ends; a replica that dies mid-request lets it lapse within
:data:`IN_FLIGHT_LEASE_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from kiln_service.config import Settings
from kiln_service.errors import DependencyUnavailableError

__all__ = ["IN_FLIGHT_LEASE_SECONDS", "US", "RedisState", "SharedState", "gcra", "open_shared_state"]

#: Microseconds per second: times are integers of microseconds since the epoch.
US = 1_000_000
#: How long an in-flight key outlives a replica that stopped renewing it.
IN_FLIGHT_LEASE_SECONDS = 30.0
_T = TypeVar("_T")


def gcra(tat_us: int | None, now_us: int, per_minute: int) -> tuple[int | None, float]:
    """The generic cell rate algorithm: a token bucket of ``per_minute`` tokens, kept as one time.

    ``tat_us`` (the theoretical arrival time) runs ahead of ``now_us`` by the time the tokens
    already taken need to refill; a submission is allowed while that lead stays within a minute.

    Args:
        tat_us: The tenant's stored time (``None`` for a full bucket).
        now_us: The current time.
        per_minute: Tokens per minute and bucket size (more than 0).

    Returns:
        ``(new tat_us, 0.0)`` when a token was taken, ``(None, seconds to wait)`` when not.
    """
    new_tat = max(tat_us or now_us, now_us) + 60 * US // per_minute
    excess = new_tat - now_us - 60 * US
    if excess > 0:
        return None, excess / US
    return new_tat, 0.0


class SharedState(Protocol):
    """What :class:`~kiln_service.fairness.RateLimiter` and
    :class:`~kiln_service.idempotency.InFlightKeys` need from a shared store."""

    def take_rate_token(self, *, tenant: str, per_minute: int) -> float:
        """Take a submission token of ``tenant``: 0.0, or the seconds until one is free."""
        ...

    def claim_in_flight(self, *, tenant: str, key: str, holder: str, lease_seconds: float) -> bool:
        """Mark ``key`` in flight for ``holder``; False when another holder has it."""
        ...

    def renew_in_flight(self, *, tenant: str, key: str, holder: str, lease_seconds: float) -> bool:
        """Extend ``holder``'s lease; False when it no longer holds the key."""
        ...

    def release_in_flight(self, *, tenant: str, key: str, holder: str) -> None:
        """End ``holder``'s lease (nothing if it lapsed or another holds the key)."""
        ...


class RedisState:
    """:class:`SharedState` in Redis: keys ``kiln:rate:<tenant>`` and ``kiln:inflight:<tenant>:<key>``.

    Args:
        url: The Redis URL (the broker's).
    """

    def __init__(self, url: str) -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def take_rate_token(self, *, tenant: str, per_minute: int) -> float:
        name = f"kiln:rate:{tenant}"

        def attempt(pipe: Any) -> float:
            seconds, micros = pipe.time()  # one clock for every replica: Redis's
            now = seconds * US + micros
            stored = pipe.get(name)
            new_tat, wait = gcra(int(stored) if stored else None, now, per_minute)
            if new_tat is not None:
                pipe.multi()
                # Once the time has passed the bucket is full again: the key can go then.
                pipe.set(name, new_tat, px=(new_tat - now) // 1000 + 1000)
            return wait

        return float(self._call(lambda: self._redis.transaction(attempt, name,
                                                                value_from_callable=True)))

    def claim_in_flight(self, *, tenant: str, key: str, holder: str, lease_seconds: float) -> bool:
        name = self._in_flight(tenant, key)
        return bool(self._call(lambda: self._redis.set(name, holder, nx=True,
                                                       px=int(lease_seconds * 1000))))

    def renew_in_flight(self, *, tenant: str, key: str, holder: str, lease_seconds: float) -> bool:
        return self._if_holder(tenant, key, holder,
                               lambda pipe, name: pipe.pexpire(name, int(lease_seconds * 1000)))

    def release_in_flight(self, *, tenant: str, key: str, holder: str) -> None:
        self._if_holder(tenant, key, holder, lambda pipe, name: pipe.delete(name))

    def _if_holder(self, tenant: str, key: str, holder: str,
                   change: Callable[[Any, str], Any]) -> bool:
        name = self._in_flight(tenant, key)

        def attempt(pipe: Any) -> bool:
            if pipe.get(name) != holder.encode():
                return False
            pipe.multi()
            change(pipe, name)
            return True

        return bool(self._call(lambda: self._redis.transaction(attempt, name,
                                                               value_from_callable=True)))

    @staticmethod
    def _in_flight(tenant: str, key: str) -> str:
        return f"kiln:inflight:{tenant}:{key}"

    @staticmethod
    def _call(action: Callable[[], _T]) -> _T:
        import redis

        try:
            return action()
        except redis.RedisError as exc:
            raise DependencyUnavailableError(
                f"the shared limits store (Redis) is unreachable ({type(exc).__name__}); "
                "try again shortly", code="broker_unavailable") from exc


def open_shared_state(settings: Settings, database: SharedState) -> SharedState:
    """Return Redis when the broker is Redis, else ``database`` (the job store).

    Args:
        settings: The settings (``KILN_BROKER_URL``).
        database: The job store, which implements :class:`SharedState` in SQL.

    Returns:
        The store every replica of this deployment shares.
    """
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisState(settings.broker_url)
    return database
