"""Optional packages: which setting needs which extra, and the error when it is missing.

The embedded default (SQLite, the filesystem broker, a local artifact folder) needs none of
them. A URL naming PostgreSQL, Redis or S3 needs its client library, installed by an extra of
``kiln-service`` (and the same extra of ``kiln-worker``); the HTTP API (``serve``, ``up``)
needs the ``api`` extra. A missing one is reported at start-up with the command that installs
it, instead of an ``ImportError`` from deep inside SQLAlchemy, kombu or the artifact store.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

__all__ = ["API_MODULES", "MissingExtraError", "missing_extras", "require_api"]

#: (setting, URL prefixes, the module it needs, the extra that installs it, what it is)
_URL_NEEDS = (
    ("KILN_DATABASE_URL", ("postgresql", "postgres:"), "psycopg", "postgres", "PostgreSQL"),
    ("KILN_BROKER_URL", ("redis://", "rediss://"), "redis", "redis", "Redis"),
    ("KILN_STORAGE_URL", ("s3://",), "boto3", "s3", "S3"),
)
#: modules of the ``api`` extra (the HTTP API and the dashboard)
API_MODULES = ("fastapi", "uvicorn", "python_multipart", "jinja2", "prometheus_client")


class MissingExtraError(ValueError):
    """A setting (or command) needs an optional package that is not installed."""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _install_hint(extra: str) -> str:
    return (f"pip install 'kiln-service[{extra}]' (on a worker: 'kiln-worker[{extra}]'; "
            f"uv sync --extra {extra})")


def missing_extras(urls: Mapping[str, str]) -> list[str]:
    """What each URL needs and is not installed, one sentence each.

    Args:
        urls: setting name (``KILN_DATABASE_URL``, ``KILN_BROKER_URL``, ``KILN_STORAGE_URL``) →
            its resolved URL.

    Returns:
        The sentences (empty when everything needed is installed).
    """
    missing = []
    for setting, prefixes, module, extra, what in _URL_NEEDS:
        url = urls.get(setting, "")
        if url.startswith(prefixes) and not _installed(module):
            missing.append(f"{setting} names {what} ({url.split(':', 1)[0]}://…), which needs "
                           f"the {module} package: {_install_hint(extra)}")
    return missing


def require_api(command: str) -> None:
    """Check that the HTTP API's packages are installed.

    Raises:
        MissingExtraError: one is missing (the message says how to install them).
    """
    absent = [m for m in API_MODULES if not _installed(m)]
    if absent:
        raise MissingExtraError(f"kiln-service {command} runs the HTTP API, which needs "
                                f"{', '.join(absent)}: pip install 'kiln-service[api]' "
                                "(uv sync --extra api)")
