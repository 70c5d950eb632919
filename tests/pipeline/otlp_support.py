"""An OTLP/HTTP trace receiver on loopback for the pipeline tests: every export request, raw and
decoded with opentelemetry-proto's own classes (no Kiln code involved)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from pipeline_support import loopback_server


@dataclass
class Span:
    """One exported span, flattened."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    service: str
    resource: dict[str, Any]
    attributes: dict[str, Any]
    start: int
    end: int


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace receiver: every export request, raw and decoded."""

    url: str = ""
    raw: list[bytes] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> bytes:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.raw.append(body)
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [Span(
                        s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                        str(resource.get("service.name")), resource, _attributes(s.attributes),
                        s.start_time_unix_nano, s.end_time_unix_nano,
                    ) for s in scope_spans.spans]
        return bytes(ExportTraceServiceResponse().SerializeToString())


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        which = pair.value.WhichOneof("value")
        out[pair.key] = getattr(pair.value, which) if which else None
    return out


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Run an :class:`OtlpReceiver` on loopback for the block (also answers webhooks with 200)."""
    rec = OtlpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            answer = rec.take(body) if self.path == "/v1/traces" else b""
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    with loopback_server(Handler) as rec.url:
        yield rec


def wait_for_spans(rec: OtlpReceiver, check: Callable[[set[str]], bool], timeout: float = 30.0
                   ) -> None:
    """Wait until ``check`` holds for the names of the spans received."""
    deadline = time.monotonic() + timeout
    while True:
        with rec.lock:
            names = {s.name for s in rec.spans}
        if check(names):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"spans never arrived; got {sorted(names)}")
        time.sleep(0.1)
