"""The dashboard's pages under ``/ui``: server-rendered, readable without JavaScript.

Sign-in takes an API key once and sets the session cookie (:mod:`kiln_service.ui.session`);
every page then shows only the signed-in tenant's jobs, as the API does. Live parts (status,
log, the submit form) use the public API from the page's script: the session cookie
authenticates its GET requests, and the CSRF token its POSTs.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from kiln_client.flags import FlagsError, parse_flags
from kiln_client.models import Job, JobStatus
from kiln_service import cache
from kiln_service.config import TARGETS
from kiln_service.deps import DEFAULT_TENANT, Services, get_services
from kiln_service.errors import JobStateError, NotFoundError
from kiln_service.stores.artifacts import artifact_key
from kiln_service.ui import session as sessions
from kiln_service.ui.graph import placement_svg

__all__ = ["router", "templates"]

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
_MAX_REPORT_BYTES = 16 * 1024 * 1024


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _duration(job: Job) -> str:
    if job.started_at is None:
        return ""
    end = job.finished_at or datetime.now(timezone.utc)
    start = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=timezone.utc)
    end = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
    return f"{max((end - start).total_seconds(), 0):.1f} s"


def _cache_hit(job: Job) -> str:
    cache = getattr(job, "cache", None)
    return "hit" if isinstance(cache, dict) and cache.get("hit") else "—"


templates.env.globals.update(duration=_duration, size=_human_size, cache_hit=_cache_hit)


class _Viewer:
    """Who is looking: the tenant, and the CSRF token for this session's forms."""

    def __init__(self, tenant: str, csrf: str, session: sessions.Session) -> None:
        self.tenant, self.csrf, self.session = tenant, csrf, session


def _viewer(request: Request) -> _Viewer | None:
    """The signed-in viewer, or ``None`` (the caller redirects to the sign-in page)."""
    services = get_services(request)
    session = sessions.read_session(request, services.ui_secret)
    if session is None:
        return None
    if services.settings.auth_enabled:
        if services.job_store.active_key_tenant(key_id=session.key_id) != session.tenant:
            return None  # the key was revoked: its sessions end with it
    elif session.tenant != DEFAULT_TENANT:
        return None
    return _Viewer(session.tenant, sessions.csrf_token(services.ui_secret, session), session)


def _render(request: Request, name: str, viewer: _Viewer | None, status: int = 200,
            **context: Any) -> HTMLResponse:
    context.update(tenant=viewer.tenant if viewer else None, csrf=viewer.csrf if viewer else None)
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'")
    return response


def _to_login(request: Request) -> Response:
    services = get_services(request)
    if services.settings.auth_enabled:
        return RedirectResponse("/ui/login", status_code=303)
    # Auth off: everyone is tenant "default"; a session still carries the CSRF token.
    response = RedirectResponse(str(request.url.path) or "/ui/", status_code=303)
    sessions.set_cookie(response, services.ui_secret, sessions.new_session("", DEFAULT_TENANT),
                        secure=request.url.scheme == "https")
    return response


def _check_csrf(request: Request, viewer: _Viewer, token: str | None) -> bool:
    return sessions.csrf_ok(get_services(request).ui_secret, viewer.session, token)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    """The sign-in form."""
    if _viewer(request) is not None:
        return RedirectResponse("/ui/", status_code=303)
    if not get_services(request).settings.auth_enabled:
        return _to_login(request)
    return _render(request, "login.html", None, page="login")


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, key: Annotated[str, Form(max_length=512)] = "") -> Response:
    """Check the key once and start a session; a wrong key gets the form again (401)."""
    services = get_services(request)
    found = services.job_store.identify_api_key(key=key.strip()) if key.strip() else None
    if found is None:
        return _render(request, "login.html", None, status=401, page="login",
                       error="That API key is unknown or revoked.")
    response = RedirectResponse("/ui/", status_code=303)
    sessions.set_cookie(response, services.ui_secret, sessions.new_session(found.id, found.tenant),
                        secure=request.url.scheme == "https")
    logger.info("dashboard sign-in: key %s (tenant %s)", found.prefix, found.tenant)
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    """End the session (CSRF-checked, so another site cannot sign the viewer out)."""
    viewer = _viewer(request)
    if viewer is not None and not _check_csrf(request, viewer, csrf):
        return Response("CSRF token missing or wrong; reload the page", status_code=403)
    response = RedirectResponse("/ui/login", status_code=303)
    sessions.clear_cookie(response, secure=request.url.scheme == "https")
    return response


def _list_filters(status: str, name: str, label: str, target: str) -> dict[str, Any]:
    labels: dict[str, str] = {}
    if label:
        key, sep, value = label.partition(":")
        if not sep or not key:
            raise ValueError(f"label filter {label!r} must be key:value")
        labels[key] = value
    if status and status not in {s.value for s in JobStatus}:
        raise ValueError(f"unknown status {status!r}")
    return {"status": [status] if status else None, "name": name or None, "labels": labels,
            "target": target or None}


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, status: str = "", name: str = "", label: str = "",
              target: str = "", cursor: Annotated[str | None, Query(max_length=200)] = None
              ) -> Response:
    """The jobs list, newest first, with filters and cursor pagination."""
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    services = get_services(request)
    shown = {"status": status, "name": name, "label": label, "target": target}
    try:
        page = services.job_store.list_jobs(tenant=viewer.tenant, limit=25, cursor=cursor,
                                            **_list_filters(status, name, label, target))
    except (ValueError, NotFoundError) as exc:
        return _render(request, "jobs.html", viewer, status=400, page="jobs", jobs=[],
                       error=str(exc), filters=shown, statuses=[s.value for s in JobStatus],
                       targets=TARGETS, filters_active=True, next_url=None)
    query = {k: v for k, v in shown.items() if v}
    next_url = None
    if page.next_cursor:
        from urllib.parse import urlencode

        next_url = "/ui/?" + urlencode({**query, "cursor": page.next_cursor})
    return _render(request, "jobs.html", viewer, page="jobs", jobs=page.items, filters=shown,
                   statuses=[s.value for s in JobStatus], targets=TARGETS,
                   filters_active=bool(query), next_url=next_url)


def _read_report(services: Services, job: Any) -> dict[str, Any] | None:
    if not any(a.name == "report.json" for a in job.artifacts):
        return None
    key = artifact_key(getattr(job, "artifacts_job", job.id), "report.json", **_attempt(job))
    try:
        with services.artifact_store.open_read(key) as handle:
            data = json.loads(handle.read(_MAX_REPORT_BYTES))
    except (OSError, ValueError):
        logger.warning("job %s: report.json unreadable", job.id)
        return None
    return data if isinstance(data, dict) else None


def _attempt(job: Any) -> dict[str, Any]:
    """The published attempt's keyword for :func:`artifact_key`, when the store has attempts."""
    published = getattr(job, "published_attempt", None)
    return {} if published is None else {"attempt": published}


def _not_found(request: Request, viewer: _Viewer) -> HTMLResponse:
    return _render(request, "not_found.html", viewer, status=404, page="", what="such job")


def _report_context(services: Services, record: Any) -> dict[str, Any]:
    report = _read_report(services, record)
    svg, collapsed = placement_svg((report or {}).get("tracer"))
    return {"report": report, "graph_svg": svg, "collapsed": collapsed,
            "job": record.to_public()}


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    """One job: state, live log, the report as a page, artifacts, cancel and delete."""
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    services = get_services(request)
    try:
        record = services.job_store.get_job(job_id=job_id, tenant=viewer.tenant)
    except NotFoundError:
        return _not_found(request, viewer)
    lines = services.job_store.read_logs(job_id=job_id)
    log_text = "".join(f"{line.line}\n" for line in lines[-2000:])
    return _render(request, "job.html", viewer, page="job", log_text=log_text,
                   **_report_context(services, record))


@router.get("/jobs/{job_id}/report", response_class=HTMLResponse)
def job_report_fragment(request: Request, job_id: str) -> Response:
    """The report sections of the job page alone (the page's script inserts them when done)."""
    viewer = _viewer(request)
    if viewer is None:
        return Response(status_code=401)
    services = get_services(request)
    try:
        record = services.job_store.get_job(job_id=job_id, tenant=viewer.tenant)
    except NotFoundError:
        return _not_found(request, viewer)
    return _render(request, "_report.html", viewer, **_report_context(services, record))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str,
               csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    """Cancel the job, then show it again."""
    return _job_action(request, job_id, csrf, "cancel")


@router.post("/jobs/{job_id}/delete")
def delete_job(request: Request, job_id: str,
               csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    """Delete a finished job and its files, then show the list."""
    return _job_action(request, job_id, csrf, "delete")


def _job_action(request: Request, job_id: str, csrf: str, action: str) -> Response:
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    if not _check_csrf(request, viewer, csrf):
        return Response("CSRF token missing or wrong; reload the page", status_code=403)
    store = get_services(request).job_store
    try:
        job = store.get_job(job_id=job_id, tenant=viewer.tenant)
        if action == "cancel":
            store.request_cancel(job_id=job_id, tenant=viewer.tenant)
            return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
        if not job.status.is_terminal:
            raise JobStateError(f"job {job_id} is {job.status.value}; cancel it first")
        cache.delete_job(store, get_services(request).artifact_store, job_id=job_id,
                         tenant=viewer.tenant)
    except NotFoundError:
        return _not_found(request, viewer)
    except JobStateError as exc:
        return Response(str(exc), status_code=409)
    return RedirectResponse("/ui/", status_code=303)


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> Response:
    """The upload form (its script posts to ``/v1/compile`` and opens the new job)."""
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    return _render(request, "submit.html", viewer, page="submit", targets=TARGETS)


@router.get("/flags/check")
def check_flags(request: Request, flags: Annotated[str, Query(max_length=4096)] = "") -> Response:
    """``{"ok", "message"}`` for a flags string: the API's own parser and messages."""
    if _viewer(request) is None:
        return Response(status_code=401)
    try:
        parsed = parse_flags(flags)
    except FlagsError as exc:
        return JSONResponse({"ok": False, "message": str(exc)})
    return JSONResponse({"ok": True, "message": f"flags OK: {parsed.to_string() or 'none'}"})


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request) -> Response:
    """Live workers, their targets, and which of this tenant's jobs each runs now."""
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    services = get_services(request)
    store = services.job_store
    live = store.list_workers(live_within_seconds=services.settings.worker_liveness_seconds)
    running = store.list_jobs(tenant=viewer.tenant, status=["running"], limit=200).items
    hosts = [w.host for w in live]
    by_worker: dict[str, list[str]] = {}
    for job in running:
        record = store.get_job(job_id=job.id, tenant=viewer.tenant)
        host, _, pid = (record.worker_id or "").rpartition(":")
        for w in live:
            # A job records the pool process that runs it; its host names the worker when
            # the host runs one worker, its pid when it is the worker's own.
            if w.host == host and (str(w.pid) == pid or hosts.count(host) == 1):
                by_worker.setdefault(w.id, []).append(job.id)
                break
    workers = [{"id": w.id, "targets": w.targets, "last_seen": w.last_seen_at.isoformat(),
                "jobs": by_worker.get(w.id, [])} for w in live]
    return _render(request, "workers.html", viewer, page="workers", workers=workers)
