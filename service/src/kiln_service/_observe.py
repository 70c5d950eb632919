"""Per-request logging context and HTTP metrics (by route template, method and status)."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln_service.logs import bind, new_context, reset_context
from kiln_service.metrics import Metrics

__all__ = ["ObserveMiddleware"]


class ObserveMiddleware:
    """Binds the request id to the request's log lines and counts and times every request.

    The route is the template (``/v1/jobs/{job_id}``), never the raw path, so the number of series
    stays bounded; a request no route matched counts as ``unmatched``. Duration runs until the
    body is sent (a followed stream counts its whole life).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.get("state") or {}
        token = new_context(request_id=state.get("request_id"))
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # Routes naming a job in their path put it on every line, the access line too.
                bind(job_id=(scope.get("path_params") or {}).get("job_id"))
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.http_duration.labels(method=method, route=route, status=str(status)).observe(
                time.perf_counter() - started)
            reset_context(token)
