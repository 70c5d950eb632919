"""Shared limits in the job store: per-tenant rate times and in-flight ``Idempotency-Key`` leases.

The database side of :class:`kiln_service._shared_state.SharedState`, used when the broker is not
Redis (the embedded default). Rows change by compare-and-set (an ``UPDATE … WHERE`` on the value
read, an ``INSERT … ON CONFLICT DO NOTHING``), which SQLite and PostgreSQL both serialise, so
replicas on one database never both take the last token or both claim a key. Times are the API
hosts' clocks in integer microseconds (keep replicas' clocks synchronised, as for the leases).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, String, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from kiln_service._shared_state import US, gcra
from kiln_service.errors import StoreError
from kiln_service.stores._schema import metadata

__all__ = ["SharedLimitsMixin", "in_flight_requests", "rate_limits"]

#: Tries of a compare-and-set before the store gives up (each loses only to another replica's win).
_CAS_TRIES = 50

#: One row per tenant that submitted lately: the time its token bucket is full again by.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("tat_us", BigInteger, nullable=False),
)

#: One row per ``Idempotency-Key`` whose first request some API replica is still handling.
in_flight_requests = Table(
    "in_flight_requests",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("idempotency_key", String(256), primary_key=True),
    Column("holder", String(32), nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
)


def _now_us() -> int:
    return int(time.time() * US)


def _insert_new(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
    """Insert a row unless its key exists; True when this call inserted it."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    # RETURNING, not rowcount: drivers do not all count a row an ON CONFLICT clause skipped alike.
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(key)
    return conn.execute(stmt).first() is not None


class SharedLimitsMixin:
    """Methods of :class:`~kiln_service.stores.jobs.JobStore` behind the shared limits."""

    def _tx(self) -> AbstractContextManager[Connection]:  # provided by JobStore
        raise NotImplementedError

    def take_rate_token(self, *, tenant: str, per_minute: int) -> float:
        """Take one of ``tenant``'s ``per_minute`` submission tokens.

        Returns:
            0.0 when taken, else the seconds until a token is free.

        Raises:
            StoreError: The database failed, or replicas kept racing for the row.
        """
        for _ in range(_CAS_TRIES):
            now = _now_us()
            # Read, then write in a transaction of its own: a SQLite reader in WAL mode cannot
            # turn into a writer once another process has written (SQLITE_BUSY_SNAPSHOT).
            with self._tx() as conn:
                stored = conn.execute(select(rate_limits.c.tat_us).where(
                    rate_limits.c.tenant == tenant)).scalar_one_or_none()
            new_tat, wait = gcra(stored, now, per_minute)
            if new_tat is None:
                return wait
            with self._tx() as conn:
                if stored is None:
                    won = _insert_new(conn, rate_limits, {"tenant": tenant, "tat_us": new_tat})
                else:
                    won = conn.execute(update(rate_limits).where(
                        rate_limits.c.tenant == tenant, rate_limits.c.tat_us == stored,
                    ).values(tat_us=new_tat)).rowcount == 1
            if won:
                return 0.0
        raise StoreError(f"the rate limit row of tenant {tenant!r} is too contended; retry")

    def claim_in_flight(self, *, tenant: str, key: str, holder: str, lease_seconds: float) -> bool:
        """Mark ``key`` in flight for ``holder`` (a lapsed lease of another holder is taken over).

        Raises:
            StoreError: The database failed.
        """
        now = _now_us()
        row = in_flight_requests.c
        with self._tx() as conn:
            conn.execute(delete(in_flight_requests).where(
                row.tenant == tenant, row.idempotency_key == key, row.expires_at_us < now))
            return _insert_new(conn, in_flight_requests, {
                "tenant": tenant, "idempotency_key": key, "holder": holder,
                "expires_at_us": now + int(lease_seconds * US)})

    def renew_in_flight(self, *, tenant: str, key: str, holder: str, lease_seconds: float) -> bool:
        """Extend ``holder``'s lease on ``key``; False when it no longer holds it.

        Raises:
            StoreError: The database failed.
        """
        row = in_flight_requests.c
        with self._tx() as conn:
            return bool(conn.execute(update(in_flight_requests).where(
                row.tenant == tenant, row.idempotency_key == key, row.holder == holder,
            ).values(expires_at_us=_now_us() + int(lease_seconds * US))).rowcount == 1)

    def release_in_flight(self, *, tenant: str, key: str, holder: str) -> None:
        """End ``holder``'s lease on ``key``.

        Raises:
            StoreError: The database failed.
        """
        row = in_flight_requests.c
        with self._tx() as conn:
            conn.execute(delete(in_flight_requests).where(
                row.tenant == tenant, row.idempotency_key == key, row.holder == holder))
