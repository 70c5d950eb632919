"""Helpers for the SDK unit tests: job payloads and a recording MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

import kiln_client


def job_payload(job_id: str = "a" * 32, **overrides: Any) -> dict[str, Any]:
    """A Job as the API returns it."""
    body: dict[str, Any] = {
        "id": job_id,
        "status": "queued",
        "stage": "queued",
        "progress": 0.0,
        "target": "xla",
        "flags": "",
        "timeout_seconds": 900,
        "created_at": "2026-11-24T12:00:00Z",
        "labels": {},
        "artifacts": [],
    }
    body.update(overrides)
    return body


def problem(status: int, code: str, detail: str, request_id: str | None = "req-123",
            headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    """A problem+json answer."""
    body = {"type": "about:blank", "title": "Error", "status": status, "detail": detail,
            "code": code, "request_id": request_id, **extra}
    return httpx.Response(status, content=json.dumps(body).encode(),
                          headers={"content-type": "application/problem+json", **(headers or {})})


class Recorder:
    """A MockTransport handler that records requests and answers from a script."""

    def __init__(self, handler: Callable[[httpx.Request, int], httpx.Response]) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        self.requests.append(request)
        return self.handler(request, len(self.requests) - 1)

    def client(self, **kwargs: Any) -> kiln_client.Client:
        kwargs.setdefault("max_retries", 3)
        http = httpx.Client(transport=httpx.MockTransport(self))
        return kiln_client.Client("http://kiln.test", http_client=http, **kwargs)

    def async_client(self, **kwargs: Any) -> kiln_client.AsyncClient:
        kwargs.setdefault("max_retries", 3)
        http = httpx.AsyncClient(transport=httpx.MockTransport(self))
        return kiln_client.AsyncClient("http://kiln.test", http_client=http, **kwargs)
