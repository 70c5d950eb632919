"""Fresh PostgreSQL databases on the shared server (``KILN_TEST_POSTGRES_URL``).

Each test session or module gets a database of its own, ``<prefix>_<random>``, dropped (with
its connections) afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url

__all__ = ["PG_ADMIN_URL", "admin_conninfo", "conninfo", "fresh_database"]

#: the server's admin URL (SQLAlchemy form); tests create and drop their databases through it
PG_ADMIN_URL = os.environ.get(
    "KILN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def conninfo(url: str) -> str:
    """The libpq connection string (for ``psycopg.connect``) of a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def admin_conninfo() -> str:
    """A libpq connection string to the admin database."""
    return conninfo(PG_ADMIN_URL)


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """Create an empty database ``<prefix>_<random>``; yield its SQLAlchemy URL; drop it after.

    Args:
        prefix: a lowercase name saying whose database it is (``kiln_test_service``).
    """
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
