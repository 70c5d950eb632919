"""OpenTelemetry: one trace from ``POST /v1/compile`` through the queue to the compile process.

A real ``kiln-service serve`` and ``kiln-worker`` (Redis broker, auth on, ``KILN_TRACING=otlp``)
compile the small SavedModel once; their OTLP/HTTP exporters send to a receiver on loopback that
decodes each export request with opentelemetry-proto's own classes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipeline_support import BIN, Api, api_env, free_port, loopback_server, wait_finished

REDIS_URL = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/7"
WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LW9mLXRoZS10cmFjZS10ZXN0LTEyMzQ="
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
pytestmark = pytest.mark.integration


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


def _run_one_job(tmp_path: Path, rec: OtlpReceiver, model_tgz: bytes, inputs_npz: bytes
                 ) -> tuple[str, str]:
    """Compile once with tracing on; return the job id and the API key used."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    env = api_env(tmp_path / "kiln", KILN_AUTH="on", KILN_TRACING="otlp",
                  KILN_BROKER_URL=REDIS_URL, KILN_WEBHOOK_ALLOW_PRIVATE_URLS="true",
                  OTEL_EXPORTER_OTLP_ENDPOINT=rec.url, OTEL_BSP_SCHEDULE_DELAY="100",
                  TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("OTEL_SERVICE_NAME", None)
    made = subprocess.run([str(BIN / "kiln-service"), "keys", "create", "--tenant", "acme"],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    key = made.stdout.split()[-1]
    api = Api(f"http://127.0.0.1:{free_port()}", env, tmp_path / "api.log")
    with open(tmp_path / "worker.log", "ab") as out:
        worker = subprocess.Popen([str(BIN / "kiln-worker"), "--targets", "xla"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        api.start()
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"{api.url}/v1/compile", timeout=60, headers={
            **auth, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}, files={
            "model": ("m.tgz", model_tgz), "example_inputs": ("x.npz", inputs_npz)}, data={
            "webhook_url": f"{rec.url}/hook", "webhook_secret": WEBHOOK_SECRET})
        assert r.status_code == 202, r.text
        job_id = str(r.json()["id"])
        job = wait_finished(api.url, job_id, auth)
        assert job["status"] == "succeeded", job
        _wait_for(rec, lambda names: "kiln.compile" in names and "POST /v1/compile" in names)
    finally:
        api.stop()
        worker.terminate()
        worker.wait(timeout=30)
    return job_id, key


def _wait_for(rec: OtlpReceiver, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with rec.lock:
            names = {s.name for s in rec.spans}
        if check(names):
            return
        time.sleep(0.1)
    raise AssertionError(f"spans never arrived; got {sorted(names)}")


def test_one_trace_from_the_request_to_the_compile_process(
    tmp_path: Path, model_tgz: bytes, inputs_npz: bytes
) -> None:
    with otlp_receiver() as rec:
        job_id, key = _run_one_job(tmp_path, rec, model_tgz, inputs_npz)
        raw = b"".join(rec.raw)
        spans = [s for s in rec.spans if s.trace_id == CALLER_TRACE]
    one = {s.name: s for s in spans}

    # The API continues the caller's trace; its steps hang under the request's server span.
    server = one["POST /v1/compile"]
    assert (server.parent_id, server.service, server.kind) == (CALLER_SPAN, "kiln-api", 2)
    assert server.attributes["http.route"] == "/v1/compile"
    assert server.attributes["http.response.status_code"] == 202
    for name in ("kiln.receive_upload", "kiln.ingest", "kiln.store_upload", "kiln.enqueue"):
        assert one[name].parent_id == server.span_id, name
        assert one[name].attributes["kiln.job_id"] == job_id
    enqueue = one["kiln.enqueue"]
    assert enqueue.kind == 4 and enqueue.attributes["messaging.destination.name"] == "kiln.xla"

    # Through the queue (context in the Celery message headers) to the worker.
    task, wait = one["kiln.compile"], one["kiln.queue_wait"]
    assert (task.parent_id, task.service, task.kind) == (enqueue.span_id, "kiln-worker", 5)
    assert wait.parent_id == enqueue.span_id and wait.start <= wait.end <= task.start
    assert task.attributes["kiln.tenant"] == "acme" and task.attributes["kiln.attempt"] == 1
    assert task.attributes["kiln.job_status"] == "succeeded"
    for name in ("kiln.fetch_upload", "kiln.compile_process"):
        assert one[name].parent_id == task.span_id, name
    uploads = {s.attributes["kiln.artifact"] for s in spans if s.name == "kiln.upload_artifact"
               and s.parent_id == task.span_id}
    assert {"compiled_model.tar.gz", "report.json", "compile.log"} <= uploads

    # Into the compile process (TRACEPARENT), its spans relayed by the worker from the sandbox.
    supervise, runner = one["kiln.compile_process"], one["kiln.runner"]
    assert runner.parent_id == supervise.span_id and runner.service == "kiln-worker"
    assert runner.resource["kiln.process"] == "compile"
    assert runner.attributes["kiln.job_id"] == job_id
    assert supervise.start <= runner.start <= runner.end <= supervise.end
    stages = {s.attributes["kiln.stage"]: s for s in spans if s.name.startswith("kiln.stage.")}
    assert {"loading", "tracing", "verifying", "storing"} <= set(stages)
    assert all(s.parent_id == runner.span_id for s in stages.values())
    assert stages["loading"].end <= stages["tracing"].start <= stages["verifying"].start

    # One trace: every span of the job's life is in it, nothing of it went elsewhere.
    assert len({s.span_id for s in spans}) == len(spans)
    assert not [s.name for s in rec.spans if s.attributes.get("kiln.job_id") == job_id
                and s.trace_id != CALLER_TRACE]
    # No secrets in anything exported.
    for secret in (key, key[12:], WEBHOOK_SECRET, WEBHOOK_SECRET[6:]):
        assert secret.encode() not in raw
