"""OpenTelemetry traces: optional (``kiln-service[otel]``), off unless ``KILN_TRACING=otlp``.

One trace follows a job across three processes::

    POST /v1/compile (API, server span)
    ├── kiln.receive_upload, kiln.ingest, kiln.cache_lookup, kiln.store_upload
    └── kiln.enqueue (producer) ──── W3C ``traceparent`` in the Celery message headers
        ├── kiln.queue_wait (worker: enqueued → taken)
        └── kiln.compile (worker, consumer)
            ├── kiln.fetch_upload
            ├── kiln.compile_process ── ``TRACEPARENT`` in the compile process's environment
            │   └── kiln.runner (compile process)
            │       └── kiln.stage.loading, .tracing, .compiling, .verifying, .storing
            └── kiln.upload_artifact (one per artifact)

The exporter is OTLP, configured by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ...); ``OTEL_SDK_DISABLED``
or ``OTEL_TRACES_EXPORTER=none`` turn it off again. Without the extra, or with tracing off, every
helper here does nothing and imports nothing of OpenTelemetry's SDK. Span attributes carry ids,
names and codes only: never headers, API keys, webhook URLs or secrets (free text is passed
through :func:`kiln_service.logs.redact` as well).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from kiln_service.logs import redact

if TYPE_CHECKING:  # types only: workers import this module and have no Starlette (api extra)
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ENQUEUED_HEADER",
    "SpanRef",
    "TracingMiddleware",
    "TracingUnavailableError",
    "annotate",
    "clean_attributes",
    "clean_text",
    "configure_tracing",
    "export_spans",
    "extract",
    "fastapi_telemetry_off",
    "force_flush",
    "inject",
    "install_provider",
    "message_headers",
    "process_resource",
    "require_tracing",
    "span",
    "traced",
    "tracing_enabled",
]

logger = logging.getLogger(__name__)

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
_F = TypeVar("_F", bound=Callable[..., Any])
#: message header with the enqueue time (ns since the epoch), where ``kiln.queue_wait`` starts
ENQUEUED_HEADER = "kiln_enqueued_ns"
_INSTALL_HINT = ("KILN_TRACING=otlp needs OpenTelemetry: pip install 'kiln-service[otel]' "
                 "(or 'kiln-worker[otel]'), or set KILN_TRACING=off")


class TracingUnavailableError(RuntimeError):
    """``KILN_TRACING=otlp`` was asked for but the ``otel`` extra is not installed."""


class _State:
    """What :func:`configure_tracing` set up in this process (``None`` parts when off)."""

    tracer: Any = None
    processor: Any = None
    provider: Any = None
    pid: int | None = None


_state = _State()


def tracing_enabled() -> bool:
    """Whether this process records spans (set up by :func:`configure_tracing`)."""
    return _state.tracer is not None and _state.pid == os.getpid()


def configure_tracing(mode: str, service_name: str) -> bool:
    """Set up the process's tracer provider and OTLP exporter, once per process.

    Args:
        mode: ``KILN_TRACING``: ``off`` or ``otlp``.
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` (or ``service.name`` in
            ``OTEL_RESOURCE_ATTRIBUTES``) names one.

    Returns:
        Whether spans are recorded from now on.

    Raises:
        TracingUnavailableError: ``otlp`` without the ``otel`` extra installed.
    """
    if not require_tracing(mode):
        return False
    if tracing_enabled():
        return True
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    processor = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(processor)
    if _state.provider is None:  # the global provider can be set once; forks keep theirs
        trace.set_tracer_provider(provider)
    install_provider(provider, processor)
    logger.info("tracing on: OTLP spans of %s", resource.attributes.get(SERVICE_NAME))
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol != "http/protobuf":
        logger.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported: Kiln exports OTLP over "
                       "HTTP (protobuf), to port 4318 by default", protocol)
    return True


def install_provider(provider: Any, processor: Any) -> None:
    """Record spans with ``provider`` from now on (the compile process brings its own).

    Args:
        provider: An OpenTelemetry SDK ``TracerProvider``.
        processor: Its span processor (:func:`export_spans` hands it spans recorded elsewhere).
    """
    _state.provider, _state.processor, _state.pid = provider, processor, os.getpid()
    _state.tracer = provider.get_tracer("kiln")


def process_resource(extra: Mapping[str, Any]) -> Any:
    """This process's resource (``service.name``, ...) plus ``extra`` attributes."""
    from opentelemetry.sdk.resources import Resource

    return _state.provider.resource.merge(Resource(clean_attributes(extra)))


def require_tracing(mode: str) -> bool:
    """Whether ``mode`` (``KILN_TRACING``) asks for spans; check the extra is there if so.

    Raises:
        TracingUnavailableError: ``otlp`` without the ``otel`` extra installed.
    """
    if mode != "otlp" or _disabled_by_otel_variables():
        return False
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise TracingUnavailableError(_INSTALL_HINT) from exc
    return True


def _disabled_by_otel_variables() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return True
    return os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none"


def force_flush(timeout_millis: int = 5000) -> None:
    """Export the spans still queued (a worker calls it at the end of each task)."""
    if tracing_enabled():
        _state.provider.force_flush(timeout_millis)


def export_spans(spans: Sequence[Any]) -> None:
    """Hand finished spans recorded elsewhere (the compile process) to this process's exporter."""
    if tracing_enabled():
        for finished in spans:
            _state.processor.on_end(finished)


class SpanRef:
    """The span of a :func:`span` block: attributes and failure, a no-op when tracing is off."""

    def __init__(self, real: Any = None) -> None:
        self.real = real

    def set(self, attributes: Mapping[str, Any]) -> None:
        """Set attributes (``None`` values skipped, see :func:`clean_attributes`)."""
        if self.real is not None:
            self.real.set_attributes(clean_attributes(attributes))

    def fail(self, description: str) -> None:
        """Mark the span as an error with ``description`` (secrets masked)."""
        if self.real is not None:
            from opentelemetry.trace import Status, StatusCode

            self.real.set_status(Status(StatusCode.ERROR, clean_text(description)))


def clean_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes fit to export: scalars as they are, text masked and cut, ``None`` dropped."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if not isinstance(value, (bool, int, float)):
            value = redact(str(value))[:256]
        out[str(key)[:128]] = value
    return out


def clean_text(text: Any) -> str | None:
    """A status description fit to export (secrets masked, at most 500 characters)."""
    return None if text is None else redact(str(text))[:500]


def annotate(attributes: Mapping[str, Any]) -> None:
    """Set attributes on the current span (see :meth:`SpanRef.set`); nothing when off."""
    if tracing_enabled():
        from opentelemetry import trace

        SpanRef(trace.get_current_span()).set(attributes)


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = "internal",
         context: Any = None, start_time: int | None = None) -> Iterator[SpanRef]:
    """Run a block inside a new current span (a child of the current one, or of ``context``).

    An exception leaving the block marks the span as an error (described by the failure code it
    carries as ``code``, else its type) and is re-raised.

    Args:
        name: The span's name.
        kind: Its kind.
        context: The parent context (from :func:`extract`); default: the current one.
        start_time: Start in nanoseconds since the epoch; default: now.
        attributes: Attributes (see :func:`clean_attributes`).

    Yields:
        The span (a no-op one when tracing is off).
    """
    if not tracing_enabled():
        yield SpanRef()
        return
    from opentelemetry.trace import SpanKind as OtelKind

    with _state.tracer.start_as_current_span(
        name, context=context, kind=OtelKind[kind.upper()], start_time=start_time,
        attributes=clean_attributes(attributes or {}), record_exception=False,
        set_status_on_exception=False,
    ) as real:
        ref = SpanRef(real)
        try:
            yield ref
        except BaseException as exc:
            code = getattr(exc, "code", None)
            ref.fail(str(getattr(code, "value", code) or type(exc).__name__))
            raise


def traced(name: str) -> Callable[[_F], _F]:
    """Decorate a function so that each call runs in a span named ``name``."""
    def decorate(func: _F) -> _F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not tracing_enabled():
                return func(*args, **kwargs)
            with span(name):
                return func(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def inject(carrier: dict[str, str], *, upper: bool = False) -> dict[str, str]:
    """Add the current trace context (``traceparent``, ``tracestate``) to ``carrier``.

    Args:
        carrier: Message headers or an environment.
        upper: Use ``TRACEPARENT``/``TRACESTATE`` (environment variables).

    Returns:
        ``carrier``, unchanged when tracing is off.
    """
    if tracing_enabled():
        from opentelemetry.propagate import inject as otel_inject

        found: dict[str, str] = {}
        otel_inject(found)
        carrier.update({key.upper() if upper else key: value for key, value in found.items()})
    return carrier


def message_headers() -> dict[str, str] | None:
    """Headers of a ``kiln.compile`` message: the trace context and the enqueue time."""
    if not tracing_enabled():
        return None
    return inject({ENQUEUED_HEADER: str(time.time_ns())})


def extract(carrier: Mapping[str, Any]) -> Any:
    """The trace context in ``carrier`` (``traceparent`` in either case), or ``None``."""
    if not tracing_enabled():
        return None
    from opentelemetry.propagate import extract as otel_extract

    found = {str(k).lower(): str(v) for k, v in carrier.items()
             if str(k).lower() in ("traceparent", "tracestate") and v}
    return otel_extract(found) if found else None


def fastapi_telemetry_off() -> dict[str, Any]:
    """``FastAPI()`` arguments turning off its own telemetry, where it has some.

    Newer FastAPI releases trace requests by themselves with the global tracer provider, which
    :func:`configure_tracing` sets: without this every request would get two server spans.
    """
    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


class TracingMiddleware:
    """A server span per HTTP request, named by method and route template.

    It continues a caller's ``traceparent``. Attributes: method, route, path, status and the
    request id; never headers, the query string or the body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing_enabled():
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1")
                   for k, v in scope.get("headers") or [] if k in (b"traceparent", b"tracestate")}
        method = str(scope.get("method", ""))
        with span(method, {
            "http.request.method": method, "url.path": scope.get("path"),
            "kiln.request_id": (scope.get("state") or {}).get("request_id"),
        }, kind="server", context=extract(headers)) as ref:
            status = 500

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await self.app(scope, receive, send_and_note)
            finally:
                route = getattr(scope.get("route"), "path", None)
                ref.set({"http.route": route, "http.response.status_code": status})
                if ref.real is not None:
                    ref.real.update_name(f"{method} {route or 'unmatched'}")
                if status >= 500:
                    ref.fail(f"HTTP {status}")
