"""The worker's part of a job's trace (see :mod:`kiln_service.tracing` for the whole picture).

- :func:`task_span`: the ``kiln.compile`` consumer span of a task, continuing the context that
  came in the Celery message headers, and the ``kiln.queue_wait`` span before it.
- :func:`runner_trace`: in the compile process, the ``kiln.runner`` span under the worker's
  ``TRACEPARENT`` and one span per compile stage. The sandbox gives the compile process no
  network, so its finished spans travel to the worker as ``span`` events on the protocol channel.
- :class:`ChildSpans`: the worker's end of that channel. The compile process runs the user's
  model, so what it sends is checked (its own trace, a bounded number of spans, ``kiln.`` names,
  plain attributes) before the worker's exporter sends it on.

Everything is a no-op when tracing is off or the ``otel`` extra is missing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kiln_service import tracing
from kiln_service.tracing import ENQUEUED_HEADER, SpanRef, span

__all__ = ["ChildSpans", "runner_trace", "task_span"]

#: most spans one compile process may hand to the worker
MAX_CHILD_SPANS = 64
_HEX = frozenset("0123456789abcdef")


@contextlib.contextmanager
def task_span(job_id: str, request: Any) -> Iterator[SpanRef]:
    """The ``kiln.compile`` span of one task, a child of the sender's ``kiln.enqueue`` span.

    Args:
        job_id: The job.
        request: The Celery task request (its headers carry the context), or ``None``.
    """
    if not tracing.tracing_enabled():
        yield SpanRef()
        return
    get = getattr(request, "get", None)
    headers = {key: get(key) for key in ("traceparent", "tracestate", ENQUEUED_HEADER)
               } if callable(get) else {}
    parent = tracing.extract({k: v for k, v in headers.items() if isinstance(v, str)})
    enqueued = str(headers.get(ENQUEUED_HEADER) or "")
    if enqueued.isdigit():
        with span("kiln.queue_wait", {"kiln.job_id": job_id}, context=parent,
                  start_time=int(enqueued)):
            pass
    with span("kiln.compile", {"kiln.job_id": job_id, "messaging.system": "celery",
                               "messaging.operation.type": "process"},
              kind="consumer", context=parent) as ref:
        yield ref


# -- the compile process ------------------------------------------------------------------------


class _EventExporter:
    """A span exporter (for ``SimpleSpanProcessor``) writing each span as a protocol event."""

    def __init__(self, send: Callable[..., None]) -> None:
        self._send = send

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for finished in spans:
            self._send("span", **_span_fields(finished))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Spans are written as they end."""
        return True


def _span_fields(finished: Any) -> dict[str, Any]:
    ctx, parent = finished.context, finished.parent
    return {
        "name": finished.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "start": finished.start_time, "end": finished.end_time,
        "status": finished.status.status_code.name.lower(),
        "description": finished.status.description,
        "attributes": dict(finished.attributes or {}),
    }


class _Stages:
    """One span per compile stage, following the ``progress`` events the runner sends."""

    def __init__(self) -> None:
        self.current: str | None = None
        self._block: contextlib.ExitStack | None = None

    def enter(self, stage: str) -> None:
        if stage == self.current:
            return
        self.close()
        self.current, self._block = stage, contextlib.ExitStack()
        self._block.enter_context(span(f"kiln.stage.{stage}", {"kiln.stage": stage}))

    def close(self) -> None:
        if self._block is not None:
            self._block.close()
            self._block = None


@contextlib.contextmanager
def runner_trace(send: Callable[..., None], attributes: Mapping[str, Any],
                 environ: Mapping[str, str] | None = None,
                 ) -> Iterator[Callable[[str], None] | None]:
    """The compile process's spans, under the worker's ``TRACEPARENT``, sent through ``send``.

    Args:
        send: The protocol channel's ``send(event, **fields)``.
        environ: Where ``TRACEPARENT`` is read (default: the process environment).
        attributes: Attributes of the ``kiln.runner`` span.

    Yields:
        The stage callback to call on each progress event (``None`` when the process is not
        traced). An exception leaving the block marks ``kiln.runner`` as failed with the
        failure code it carries (``JobError.code``) or its type.
    """
    env = os.environ if environ is None else environ
    provider = _child_provider(send) if env.get("TRACEPARENT") else None
    if provider is None:
        yield None
        return
    parent = tracing.extract({"traceparent": env["TRACEPARENT"],
                              "tracestate": env.get("TRACESTATE", "")})
    stages = _Stages()
    try:
        with span("kiln.runner", attributes, context=parent):
            try:
                yield stages.enter
            finally:
                stages.close()
    finally:
        provider.shutdown()


def _child_provider(send: Callable[..., None]) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    except ImportError:  # the worker traces, this Python cannot: compile untraced
        return None
    processor = SimpleSpanProcessor(_EventExporter(send))  # type: ignore[arg-type]
    provider = TracerProvider(resource=Resource.get_empty())
    provider.add_span_processor(processor)
    tracing.install_provider(provider, processor)
    return provider


# -- the worker's end ---------------------------------------------------------------------------


class ChildSpans:
    """Receives the compile process's ``span`` events and exports the valid ones.

    Built inside the worker's ``kiln.compile_process`` span: the compile process's spans must
    belong to its trace.
    """

    def __init__(self) -> None:
        self.trace_id: int | None = None
        self.accepted = self.refused = 0
        if tracing.tracing_enabled():
            from opentelemetry import trace

            ctx = trace.get_current_span().get_span_context()
            self.trace_id = ctx.trace_id if ctx.is_valid else None

    def take(self, event: Mapping[str, Any]) -> None:
        """Export one ``span`` event, or count it as refused."""
        if self.trace_id is None:
            return
        built = None
        if self.accepted < MAX_CHILD_SPANS:
            with contextlib.suppress(TypeError, ValueError, KeyError):
                built = self._build(event)
        if built is None:
            self.refused += 1
            return
        self.accepted += 1
        tracing.export_spans([built])

    def _build(self, event: Mapping[str, Any]) -> Any:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

        trace_id, span_id = _hex_id(event["trace_id"], 32), _hex_id(event["span_id"], 16)
        parent_id = _hex_id(event["parent_id"], 16)
        name, start, end = str(event["name"]), int(event["start"]), int(event["end"])
        if trace_id != self.trace_id or not name.startswith("kiln.") or not 0 < start <= end:
            return None
        attributes = event.get("attributes") or {}
        status = {"error": StatusCode.ERROR, "ok": StatusCode.OK}.get(
            str(event.get("status")), StatusCode.UNSET)
        flags = TraceFlags(TraceFlags.SAMPLED)
        return ReadableSpan(
            name[:128],
            context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags),
            parent=SpanContext(trace_id, parent_id, is_remote=True, trace_flags=flags),
            resource=tracing.process_resource({"kiln.process": "compile"}),
            attributes=tracing.clean_attributes(dict(list(attributes.items())[:16])),
            status=Status(status, tracing.clean_text(event.get("description"))),
            start_time=start, end_time=end,
            instrumentation_scope=InstrumentationScope("kiln.runner"),
        )


def _hex_id(value: Any, digits: int) -> int:
    text = str(value)
    if len(text) != digits or not set(text) <= _HEX or int(text, 16) == 0:
        raise ValueError(f"not a {digits}-digit id")
    return int(text, 16)
