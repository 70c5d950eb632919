"""API keys and per-tenant counts in the job store.

A key is ``kiln_`` plus 43 random URL-safe characters (``secrets.token_urlsafe(32)``). Only its
sha256 is stored, with its first :data:`PREFIX_CHARS` characters to find the row and to name
the key in listings; a presented key is hashed, its prefix looked up and the stored hash
compared in constant time. Keys are revoked, never deleted, so listings keep their history.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from contextlib import AbstractContextManager
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import (
    Column,
    Connection,
    Index,
    String,
    Table,
    UniqueConstraint,
    func,
    or_,
    select,
    update,
)

from kiln_service.errors import BadRequestError, NotFoundError
from kiln_service.stores._schema import UTCDateTime, jobs, metadata, utcnow

__all__ = ["KEY_PREFIX", "PREFIX_CHARS", "ApiKeyInfo", "ApiKeyMixin", "NewApiKey", "api_keys",
           "hash_key"]

logger = logging.getLogger(__name__)

KEY_PREFIX = "kiln_"
#: characters of a key kept in clear to find and name it (``kiln_`` + 7 random characters)
PREFIX_CHARS = 12
#: ``last_used_at`` is refreshed at most this often, so that reads do not turn into writes
TOUCH_EVERY = timedelta(seconds=60)
ACTIVE_STATUSES = ("queued", "running")
_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(256)),
    Column("prefix", String(32), nullable=False),
    Column("key_sha256", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
    Column("last_used_at", UTCDateTime()),
    UniqueConstraint("key_sha256", name="uq_api_keys_key_sha256"),
    Index("ix_api_keys_prefix", "prefix"),
    Index("ix_api_keys_tenant", "tenant"),
)


def hash_key(key: str) -> str:
    """Return the hex sha256 of an API key (what the table stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyInfo(BaseModel):
    """One API key as listed: never the key itself."""

    id: str
    tenant: str
    name: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewApiKey(BaseModel):
    """A key just created: the only time the full key exists outside its owner."""

    info: ApiKeyInfo
    key: str


def check_tenant(tenant: str) -> str:
    """Return ``tenant`` if it is a valid tenant name.

    Raises:
        BadRequestError: Empty, longer than 64 characters, or not ``[A-Za-z0-9._-]``.
    """
    if not tenant or len(tenant) > 64 or not set(tenant) <= _TENANT_CHARS:
        raise BadRequestError(
            f"invalid tenant name {tenant!r}: use 1 to 64 letters, digits, '.', '_' or '-'",
            code="invalid_tenant")
    return tenant


class ApiKeyMixin:
    """Methods of :class:`~kiln_service.stores.jobs.JobStore` about API keys and tenants."""

    def _tx(self) -> AbstractContextManager[Connection]:  # provided by JobStore
        raise NotImplementedError

    def create_api_key(self, *, tenant: str, name: str | None = None) -> NewApiKey:
        """Create a random key for ``tenant``; only its hash is stored.

        Args:
            tenant: Owner of the key (and of every job submitted with it).
            name: A label to recognise the key by.

        Returns:
            The stored row and the full key (shown once).

        Raises:
            BadRequestError: The tenant name is invalid.
            StoreError: The database failed (or is not migrated).
        """
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {"id": uuid.uuid4().hex, "tenant": check_tenant(tenant), "name": name,
               "prefix": key[:PREFIX_CHARS], "key_sha256": hash_key(key), "created_at": utcnow(),
               "revoked_at": None, "last_used_at": None}
        with self._tx() as conn:
            conn.execute(api_keys.insert().values(**row))
        logger.info("API key %s (%s) created for tenant %s", row["id"], row["prefix"], tenant)
        return NewApiKey(info=ApiKeyInfo.model_validate(row), key=key)

    def authenticate_api_key(self, *, key: str) -> str | None:
        """Return the tenant of a valid, unrevoked key, or ``None``.

        Args:
            key: The key as presented by the caller.

        Returns:
            The key's tenant, or ``None`` for an unknown or revoked key.

        Raises:
            StoreError: The database failed.
        """
        found = self.identify_api_key(key=key)
        return None if found is None else found.tenant

    def active_key_tenant(self, *, key_id: str) -> str | None:
        """Return the tenant of the unrevoked key with id ``key_id`` (a dashboard session's key).

        Raises:
            StoreError: The database failed.
        """
        query = select(api_keys.c.tenant).where(api_keys.c.id == key_id,
                                                api_keys.c.revoked_at.is_(None))
        with self._tx() as conn:
            tenant = conn.execute(query).scalar_one_or_none()
        return None if tenant is None else str(tenant)

    def identify_api_key(self, *, key: str) -> ApiKeyInfo | None:
        """Return the valid, unrevoked key ``key`` is, or ``None`` (touches ``last_used_at``).

        Raises:
            StoreError: The database failed.
        """
        if not key.startswith(KEY_PREFIX) or len(key) > 256:
            return None
        presented = hash_key(key)
        query = select(api_keys).where(api_keys.c.prefix == key[:PREFIX_CHARS],
                                       api_keys.c.revoked_at.is_(None))
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        found = None
        for row in rows:
            # Constant-time comparison of the digests: no early exit on the first differing byte.
            if hmac.compare_digest(row["key_sha256"], presented):
                found = row
        if found is None:
            return None
        now = utcnow()
        if found["last_used_at"] is None or now - found["last_used_at"] > TOUCH_EVERY:
            with self._tx() as conn:
                conn.execute(update(api_keys).where(api_keys.c.id == found["id"])
                             .values(last_used_at=now))
        return ApiKeyInfo.model_validate(dict(found))

    def revoke_api_key(self, *, key_id_or_prefix: str) -> ApiKeyInfo:
        """Revoke the key with this id or prefix (revoking a revoked key changes nothing).

        Args:
            key_id_or_prefix: The key's id, its listed prefix, or the full key.

        Returns:
            The revoked key.

        Raises:
            NotFoundError: No key matches, or a prefix matches several keys.
            StoreError: The database failed.
        """
        ref = key_id_or_prefix.strip()
        prefix = ref[:PREFIX_CHARS] if ref.startswith(KEY_PREFIX) else ref
        with self._tx() as conn:
            rows = conn.execute(select(api_keys).where(
                or_(api_keys.c.id == ref, api_keys.c.prefix == prefix))).mappings().all()
            if len(rows) != 1:
                what = "no API key" if not rows else f"{len(rows)} API keys"
                raise NotFoundError(f"{what} with id or prefix {ref!r}; list them with "
                                    "`kiln-service keys list` and pass the id", code="api_key_not_found")
            row = dict(rows[0])
            if row["revoked_at"] is None:
                row["revoked_at"] = utcnow()
                conn.execute(update(api_keys).where(api_keys.c.id == row["id"])
                             .values(revoked_at=row["revoked_at"]))
        logger.info("API key %s (%s) of tenant %s revoked", row["id"], row["prefix"], row["tenant"])
        return ApiKeyInfo.model_validate(row)

    def list_api_keys(self, *, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Return keys (never their value), oldest first.

        Args:
            tenant: Only this tenant's keys.

        Returns:
            The keys, revoked ones included.

        Raises:
            StoreError: The database failed.
        """
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self._tx() as conn:
            return [ApiKeyInfo.model_validate(dict(r)) for r in conn.execute(query).mappings()]

    def count_api_keys(self) -> int:
        """Return how many keys exist (revoked ones included)."""
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).select_from(api_keys)).scalar_one())

    def count_active_jobs(self, *, tenant: str) -> int:
        """Return how many of ``tenant``'s jobs are unfinished (queued or running).

        Args:
            tenant: The tenant.

        Returns:
            The count, from the job store (so it holds across API processes).

        Raises:
            StoreError: The database failed.
        """
        query = (select(func.count()).select_from(jobs)
                 .where(jobs.c.tenant == tenant, jobs.c.status.in_(ACTIVE_STATUSES)))
        with self._tx() as conn:
            return int(conn.execute(query).scalar_one())
