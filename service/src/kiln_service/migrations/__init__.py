"""Alembic migrations of the job store, packaged so ``kiln-service migrate`` works from a wheel.

:func:`upgrade` applies them; :func:`current_revision` and :func:`head_revision` let start-up
refuse an unmigrated database with a clear message.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

__all__ = ["alembic_config", "current_revision", "head_revision", "is_up_to_date", "upgrade"]

logger = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> object:
    """Return an alembic ``Config`` pointing at these migrations and the database ``url``.

    Args:
        url: SQLAlchemy URL of the job store.

    Returns:
        The ``alembic.config.Config``.
    """
    from alembic.config import Config

    from kiln_service.stores.jobs import normalize_database_url

    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    # ConfigParser interpolation treats % specially; URLs may carry %-escapes in passwords.
    cfg.set_main_option("sqlalchemy.url", normalize_database_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``.

    Args:
        url: SQLAlchemy URL of the job store (a SQLite file's folder is created if missing).
        revision: Target revision.
    """
    from alembic import command

    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)  # type: ignore[arg-type]
    logger.info("job store migrated to %s", revision)


def head_revision() -> str:
    """Return the newest revision id shipped with this package."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()  # type: ignore[arg-type]
    if head is None:
        raise RuntimeError("kiln_service ships no migrations")
    return head


def current_revision(url: str) -> str | None:
    """Return the revision the database is at, or ``None`` if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    from kiln_service.stores.jobs import normalize_database_url

    _ensure_sqlite_dir(url)
    engine = create_engine(normalize_database_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(url: str) -> bool:
    """Return whether the database is at the head revision."""
    return current_revision(url) == head_revision()


def _ensure_sqlite_dir(url: str) -> None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and url[len(prefix):] not in ("", ":memory:"):
        Path(url[len(prefix):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
