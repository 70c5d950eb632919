"""OpenTelemetry: one trace from ``POST /v1/compile`` through the queue to the compile process.

The shared ``job_run`` (``conftest.py``): a real ``kiln-service serve`` and ``kiln-worker`` with
``KILN_TRACING=otlp`` compile the small SavedModel once, exporting to an OTLP/HTTP receiver on
loopback that decodes each request with opentelemetry-proto's own classes (``otlp_support``).
"""

from __future__ import annotations

import pytest
from pipeline_support import CALLER_SPAN, CALLER_TRACE, WEBHOOK_SECRET, JobRun

pytestmark = pytest.mark.integration


def test_one_trace_from_the_request_to_the_compile_process(job_run: JobRun) -> None:
    rec, job_id, key = job_run.traces, job_run.job_id, job_run.key
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
    assert '"event":"span"' not in job_run.job_log  # relayed to the exporter, not the job log
    # No secrets in anything exported.
    for secret in (key, key[12:], WEBHOOK_SECRET, WEBHOOK_SECRET[6:]):
        assert secret.encode() not in raw
