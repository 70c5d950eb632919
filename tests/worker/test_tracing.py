"""Tracing without the ``otel`` extra, and the checks on spans the compile process hands over."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_client.codes import FailureCode
from kiln_service import tracing
from kiln_worker._failures import JobError
from kiln_worker._tracing import MAX_CHILD_SPANS, ChildSpans, runner_trace

WITHOUT_EXTRA = textwrap.dedent("""
    import sys, importlib.abc

    class NoOtelSdk(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoOtelSdk())
    import asyncio, httpx
    from kiln_service import tracing
    from kiln_service.config import Settings
    from kiln_service.main import create_app
    from kiln_worker import _tracing

    with tracing.span("kiln.x", {"a": 1}) as ref:
        ref.set({"b": 2}); ref.fail("no")
    assert tracing.inject({}) == {} and tracing.message_headers() is None
    assert tracing.configure_tracing("off", "kiln-api") is False
    with _tracing.runner_trace(print, {}, {"TRACEPARENT": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) as on_stage:
        assert on_stage is None
    async def livez(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return (await c.get("/livez")).status_code
    assert asyncio.run(livez(create_app(Settings(data_dir=sys.argv[1], auth="off")))) == 200
    try:
        create_app(Settings(data_dir=sys.argv[1], auth="off", tracing="otlp"))
    except tracing.TracingUnavailableError as exc:
        assert "kiln-service[otel]" in str(exc), exc
    else:
        raise AssertionError("KILN_TRACING=otlp without the extra was accepted")
    assert not [m for m in sys.modules if m.startswith("opentelemetry.sdk")]
    print("ok")
""")


def test_everything_works_without_the_extra(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_EXTRA, str(tmp_path / "kiln")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process for one test, spans kept in memory; off again afterwards."""
    saved = dict(vars(tracing._state))
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracing.install_provider(provider, processor)
    try:
        yield memory
    finally:
        vars(tracing._state).clear()
        vars(tracing._state).update(saved)


def _child_events(traceparent: str) -> list[dict[str, Any]]:
    """The ``span`` events a compile process sends for two stages (SDK in this process)."""
    sent: list[dict[str, Any]] = []
    saved = dict(vars(tracing._state))
    try:
        with contextlib.suppress(JobError), runner_trace(
                lambda event, **fields: sent.append(fields), {"kiln.job_id": "j"},
                {"TRACEPARENT": traceparent}) as on_stage:
            assert on_stage is not None
            on_stage("loading")
            on_stage("tracing")
            raise JobError(FailureCode.TIME_OUT, "too slow")
    finally:
        vars(tracing._state).clear()
        vars(tracing._state).update(saved)
    return sent


def test_the_worker_exports_only_sound_spans_of_its_own_trace(
    exported: InMemorySpanExporter,
) -> None:
    with tracing.span("kiln.compile_process") as supervise:
        relay = ChildSpans()
    own = supervise.real.get_span_context()
    traceparent = f"00-{own.trace_id:032x}-{own.span_id:016x}-01"
    events = _child_events(traceparent)
    assert [e["name"] for e in events] == ["kiln.stage.loading", "kiln.stage.tracing",
                                           "kiln.runner"]
    foreign = {**events[0], "trace_id": "ab" * 16}
    renamed = {**events[0], "name": "evil"}
    backwards = {**events[0], "start": events[0]["end"] + 1}
    for event in (*events, foreign, renamed, backwards, {"name": "kiln.x"}):
        relay.take(event)
    got = {s.name: s for s in exported.get_finished_spans()}
    assert set(got) == {"kiln.compile_process", "kiln.stage.loading", "kiln.stage.tracing",
                        "kiln.runner"}
    assert (relay.accepted, relay.refused) == (3, 4)
    runner = got["kiln.runner"]
    assert runner.parent is not None and runner.parent.span_id == own.span_id
    assert runner.status.description == FailureCode.TIME_OUT.value and runner.attributes == {"kiln.job_id": "j"}
    assert runner.resource.attributes["kiln.process"] == "compile"
    assert got["kiln.stage.tracing"].parent.span_id == runner.context.span_id  # type: ignore[union-attr]
    for _ in range(MAX_CHILD_SPANS):
        relay.take(events[0])
    assert relay.accepted == MAX_CHILD_SPANS  # a compile process cannot flood the exporter
