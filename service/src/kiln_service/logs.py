"""Log set-up of Kiln's processes: JSON lines or text, with the job and request on every line.

``KILN_LOG_FORMAT=json`` makes every record one JSON object per line (``time``, ``level``,
``logger``, ``message``, ``process`` and, where they apply, ``job_id``, ``request_id``,
``tenant``, ``attempt``, ``exc_info``); ``text`` (the default) keeps readable lines for a
terminal, with the same fields appended as ``key=value``.

The fields come from a per-task context (:func:`bind`): the API binds the request id at the
start of each request and the tenant and job once known; the worker binds the job and attempt
for the duration of a task; the compile process binds them at start. Secrets never reach a
line: API keys (``kiln_…``), webhook secrets (``whsec_…``), bearer tokens and passwords in URLs
are masked in every message by :class:`RedactingFilter`.

Handlers are installed only by entry points (:func:`configure_logging`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

__all__ = ["CONTEXT_FIELDS", "bind", "bound", "configure_logging", "redact", "uvicorn_log_config"]

#: the fields a line carries when they apply
CONTEXT_FIELDS = ("job_id", "request_id", "tenant", "attempt")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kiln_log_context", default=None)
_SECRETS = re.compile(
    r"(?P<key>kiln_[A-Za-z0-9_\-]{7})[A-Za-z0-9_\-]{30,}"      # API keys: keep the prefix
    r"|whsec_[A-Za-z0-9+/=]{8,}"                                # webhook secrets
    r"|(?P<bearer>[Bb]earer\s+)[A-Za-z0-9._~+/=\-]{8,}"         # bearer tokens
    r"|(?P<url>://[^/\s:@]+:)[^/\s@]+@"                         # passwords in URLs
)


def redact(text: str) -> str:
    """Mask API keys, webhook secrets, bearer tokens and URL passwords in ``text``."""
    def mask(match: re.Match[str]) -> str:
        if match.group("key"):
            return match.group("key") + "…"
        if match.group("bearer"):
            return match.group("bearer") + "***"
        if match.group("url"):
            return match.group("url") + "***@"
        return "whsec_***"
    return _SECRETS.sub(mask, text)


def bind(**fields: Any) -> None:
    """Add fields to the current context's lines (a request, a task); ``None`` values are dropped.

    The context is one dict shared by everything the request or task runs, threads included, so
    a field bound deep inside (the tenant once authenticated) shows on later lines too.
    """
    current = _context.get()
    if current is None:
        current = {}
        _context.set(current)
    current.update({k: v for k, v in fields.items() if v is not None})


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Run a block in a fresh logging context holding ``fields``."""
    token = _context.set({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _context.reset(token)


def new_context(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Start a fresh context (a request); undo with ``reset_context(token)``."""
    return _context.set({k: v for k, v in fields.items() if v is not None})


def reset_context(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """End a context started by :func:`new_context`."""
    _context.reset(token)


class RedactingFilter(logging.Filter):
    """Masks secrets in the message and adds the context fields to the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what we have
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(), "process": record.processName or "", "pid": record.process,
            **self.static,
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value…``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS
                         if getattr(record, k, None) is not None)
        return redact(f"{text} [{extra}]" if extra else text)


def make_handler(fmt: str, stream: Any = None, static: Mapping[str, Any] | None = None) -> logging.Handler:
    """A stream handler with Kiln's filter and the chosen formatter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter(static) if fmt == "json" else TextFormatter())
    return handler


def configure_logging(fmt: str = "text", level: int | str = logging.INFO, *, stream: Any = None,
                      static: Mapping[str, Any] | None = None) -> None:
    """Install Kiln's handler on the root logger, for an entry point (a no-op where another
    handler is installed already, as with ``logging.basicConfig``).

    Args:
        fmt: ``json`` or ``text`` (``KILN_LOG_FORMAT``).
        level: The root level.
        stream: Where lines go (default stderr).
        static: Fields put on every JSON line (``service``: ``api``/``worker``/``compile``).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "kiln", False):
            root.removeHandler(handler)
    if root.handlers:
        return  # like logging.basicConfig: a program embedding Kiln (or a test runner) owns logging
    handler = make_handler(fmt, stream, static)
    handler.kiln = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's loggers hand their records to the root handler (no uvicorn formatting)."""
    return {"version": 1, "disable_existing_loggers": False,
            "loggers": {name: {"handlers": [], "propagate": True}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}
