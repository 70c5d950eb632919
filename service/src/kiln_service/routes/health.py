"""``/livez``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from kiln_service.deps import Services, get_services
from kiln_service.errors import KilnServiceError, problem_response
from kiln_service.metrics import PROMETHEUS_CONTENT_TYPE
from kiln_service.queue import check_broker

__all__ = ["router"]

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/livez", summary="Liveness: the process answers")
def livez() -> dict[str, str]:
    """Return ``{"status": "ok"}`` while the process serves requests."""
    return {"status": "ok"}


#: compile isolation modes, weakest first (``GET /readyz`` reports the weakest live one)
_SANDBOX_ORDER = ("none", "unknown", "bubblewrap")


@router.get("/readyz", summary="Readiness: job store, artifact store and broker reachable; "
            "how live workers isolate compiles")
async def readyz(request: Request) -> Response:
    """Check each dependency; 503 problem naming those that are down.

    The answer also says how compiles are isolated: ``sandbox`` is the weakest mode among the
    live workers (``bubblewrap``; ``none`` if any runs compiles without isolation; ``null`` when
    no worker is live) and ``sandbox_workers`` gives each live worker's.
    """
    services = get_services(request)
    checks = await anyio.to_thread.run_sync(_run_checks, services)
    down = {name: error for name, error in checks.items() if error is not None}
    if down:
        return problem_response(
            request, status=503, code="not_ready",
            detail="not ready: " + "; ".join(f"{name}: {error}" for name, error in down.items()),
            errors=[{"component": name, "msg": error} for name, error in down.items()],
            headers={"Retry-After": "5"},
        )
    from fastapi.responses import JSONResponse

    workers = await anyio.to_thread.run_sync(_worker_sandboxes, services)
    modes = sorted(set(workers.values()), key=_SANDBOX_ORDER.index)
    return JSONResponse({"status": "ok", "checks": {name: "ok" for name in checks},
                         "sandbox": modes[0] if modes else None, "sandbox_workers": workers})


def _worker_sandboxes(services: Services) -> dict[str, str]:
    """``worker id → sandbox mode`` of the live workers (``unknown`` for older workers)."""
    try:
        live = services.job_store.list_workers(
            live_within_seconds=services.settings.worker_liveness_seconds)
    except KilnServiceError:
        return {}
    return {w.id: w.sandbox if w.sandbox in _SANDBOX_ORDER else "unknown" for w in live}


def _run_checks(services: Services) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    for name, check in (
        ("job_store", services.job_store.ping),
        ("artifact_store", services.artifact_store.check_writable),
        ("broker", lambda: check_broker(services.celery)),
    ):
        try:
            check()
            checks[name] = None
        except KilnServiceError as exc:
            checks[name] = exc.detail
        except Exception as exc:  # a readiness probe reports every failure, whatever its type
            checks[name] = f"{type(exc).__name__}: {exc}"
    return checks


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Return the metrics, refreshed from the job store."""
    services = get_services(request)
    await anyio.to_thread.run_sync(services.metrics.refresh, services.job_store)
    return Response(services.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)
