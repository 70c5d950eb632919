"""Dashboard sessions: a signed cookie naming an API key, and the CSRF token that goes with it.

Signing in posts an API key once; the browser then holds only ``kiln_session``, an HMAC-signed
value naming the key's id, its tenant and an expiry (HttpOnly, SameSite=Strict, never in a URL).
Every request re-checks that the key is still active, so revoking a key ends its sessions at once.
State-changing requests must also carry the session's CSRF token (a form field or the
``X-CSRF-Token`` header), derived from the session so nothing is stored server-side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "Session",
    "clear_cookie",
    "csrf_ok",
    "csrf_token",
    "new_session",
    "read_session",
    "session_secret",
    "set_cookie",
]

COOKIE_NAME = "kiln_session"
CSRF_HEADER = "x-csrf-token"
#: how long a session lasts without signing in again
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A signed-in browser: which key, which tenant, until when."""

    key_id: str
    tenant: str
    expires: int
    nonce: str


def session_secret(configured: str | None, data_dir: Path) -> bytes:
    """The signing secret: the configured one, else one kept in ``{data_dir}/ui-session-secret``.

    The file is created once (mode 0600) so every API process on the same data folder, and a
    restarted one, accepts the same cookies. Production sets ``KILN_UI_SESSION_SECRET``.
    """
    if configured:
        return configured.encode("utf-8")
    path = data_dir / "ui-session-secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    return value


def _sign(secret: bytes, payload: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, payload, hashlib.sha256).digest()).decode()


def _encode(secret: bytes, session: Session) -> str:
    payload = json.dumps({"k": session.key_id, "t": session.tenant, "e": session.expires,
                          "n": session.nonce}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _sign(secret, payload)


def _decode(secret: bytes, value: str) -> Session | None:
    body, _, signature = value.partition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if not hmac.compare_digest(_sign(secret, payload), signature):
            return None
        data = json.loads(payload)
        session = Session(str(data["k"]), str(data["t"]), int(data["e"]), str(data["n"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > time.time() else None


def read_session(request: Request, secret: bytes) -> Session | None:
    """The request's valid (signed, unexpired) session, if any; the key is not checked here."""
    value = request.cookies.get(COOKIE_NAME)
    return _decode(secret, value) if value and len(value) < 4096 else None


def new_session(key_id: str, tenant: str) -> Session:
    """A fresh session for ``key_id``'s tenant."""
    return Session(key_id, tenant, int(time.time()) + SESSION_SECONDS, secrets.token_hex(8))


def csrf_token(secret: bytes, session: Session) -> str:
    """The CSRF token of ``session``: an HMAC of its nonce under a purpose-bound key."""
    return _sign(secret + b"|csrf", session.nonce.encode("ascii"))[:43]


def csrf_ok(secret: bytes, session: Session, presented: str | None) -> bool:
    """Whether ``presented`` is ``session``'s CSRF token (constant-time)."""
    return bool(presented) and hmac.compare_digest(csrf_token(secret, session), presented or "")


def set_cookie(response: Response, secret: bytes, session: Session, *, secure: bool) -> None:
    """Attach the session cookie: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    response.set_cookie(COOKIE_NAME, _encode(secret, session), max_age=SESSION_SECONDS, path="/",
                        httponly=True, samesite="strict", secure=secure)


def clear_cookie(response: Response, *, secure: bool) -> None:
    """Remove the session cookie."""
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=secure)
