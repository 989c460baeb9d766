"""OpenTelemetry tracing of the façade: set up once, configured by the standard `OTEL_*` variables.

Spec of the variables: https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/
(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT / _HEADERS /
_PROTOCOL, OTEL_TRACES_SAMPLER[_ARG], OTEL_SDK_DISABLED). The SDK and the exporters read most of
them themselves; this module only chooses the exporter class from the protocol (the exporters do
not read OTEL_EXPORTER_OTLP_PROTOCOL) and applies the explicit `TracingSettings` overrides.
Which span processor exports (`span_export`: the export child or the SDK's BatchSpanProcessor,
span_export.py) is a setting of its own (`autoglm serve --span-export`).

Tracing is ON only when an endpoint is configured (flag or env) or `enabled=True`, and never
with OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none: the SDK's own default
(localhost:4317) would otherwise log export failures on every host without a collector. When off,
every helper here returns at once without touching the context (tracing off costs nothing).

gRPC spans come from the public `opentelemetry-instrumentation-grpc` aio interceptors (style.md
item 9). Spans carry counts, sampling parameters and ids only — never prompt text, token ids,
metadata values or exception messages (they can echo caller input).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import context, trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from autoglm.server.telemetry import logs
from autoglm.server.telemetry.span_export import DEFAULT_SPAN_EXPORT, check_span_export
from autoglm.server.telemetry.span_offload import OffloadSpanProcessor

log = logging.getLogger("autoglm.server.telemetry.tracing")

DEFAULT_SERVICE_NAME = "autoglm-server"
GEN_AI_SYSTEM = "autoglm"  # gen_ai.system: our own value; the engine is TensorRT-LLM in Triton
FIRST_TOKEN_EVENT = "gen_ai.first_token"
# Probes (kubelet, load balancers) and reflection would otherwise make one trace every few
# seconds; Triton's readiness polling by the façade likewise.
_UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
_UNTRACED_TRITON_METHODS = ("ModelReady", "ServerReady", "ServerLive", "ModelMetadata")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """Explicit overrides (CLI flags); None means "as the OTEL_* variables say"."""

    enabled: bool | None = None  # True: on even without an endpoint (SDK default localhost:4317)
    service_name: str | None = None  # else OTEL_SERVICE_NAME, else "autoglm-server"
    endpoint: str | None = None  # grpc: http(s)://host:4317; http/protobuf: full …/v1/traces URL
    protocol: str | None = None  # "grpc" | "http/protobuf"; else OTEL_EXPORTER_OTLP_PROTOCOL
    headers: tuple[tuple[str, str], ...] | None = None  # else OTEL_EXPORTER_OTLP_HEADERS
    sample_ratio: float | None = None  # parentbased_traceidratio; else OTEL_TRACES_SAMPLER
    insecure: bool | None = None  # grpc only; else inferred from the scheme (http:// = plain)
    batch: bool = True  # False = export each span at once (tests, debugging)
    # With batch: "child" = the export child process, "batch" = the SDK's BatchSpanProcessor
    # in this process (span_export.py).
    span_export: str = DEFAULT_SPAN_EXPORT

    def validate(self) -> None:
        if self.protocol is not None and self.protocol not in ("grpc", "http/protobuf"):
            raise ValueError(f"tracing.protocol: {self.protocol!r} is not grpc or http/protobuf")
        if self.sample_ratio is not None and not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError(f"tracing.sample_ratio: {self.sample_ratio} is not within [0, 1]")
        check_span_export(self.span_export, "tracing.span_export")


_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_global_set = False


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _wanted(settings: TracingSettings) -> bool:
    if (_env("OTEL_SDK_DISABLED") or "").lower() in _TRUE or settings.enabled is False:
        return False
    if (_env("OTEL_TRACES_EXPORTER") or "").lower() == "none":
        return False
    if settings.enabled:
        return True
    return bool(
        settings.endpoint
        or _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _protocol(settings: TracingSettings) -> str:
    protocol = (
        settings.protocol
        or _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
        # The spec's default is http/protobuf, but our collectors listen on 4317 (grpc) and
        # opentelemetry-python's exporter package has always defaulted to grpc.
        or "grpc"
    )
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use grpc or http/protobuf")
    return protocol


def exporter_for(settings: TracingSettings) -> SpanExporter:
    """The OTLP exporter the settings and the OTEL_* variables ask for (in the span exporter
    process, span_export_child.py, when `settings.span_export` is "child" and `batch` is on)."""
    protocol = _protocol(settings)
    headers = dict(settings.headers) if settings.headers is not None else None
    # Imported here so that a façade with tracing off never loads the exporters.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=settings.endpoint, insecure=settings.insecure, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=settings.endpoint, headers=headers)


def setup_tracing(settings: TracingSettings | None = None) -> TracerProvider | None:
    """Create the tracer provider and exporter once; None when tracing is off.

    The first provider also becomes OpenTelemetry's global one (OTel allows setting it once per
    process); a later call after `shutdown_tracing()` gets a fresh provider for this module's
    helpers and interceptors, which tests rely on.
    """
    global _provider, _tracer, _global_set
    settings = settings or TracingSettings()
    settings.validate()
    if _provider is not None:
        return _provider
    if not _wanted(settings):
        return None
    attrs: dict[str, Any] = {}
    if settings.service_name:
        attrs[SERVICE_NAME] = settings.service_name
    elif not _env("OTEL_SERVICE_NAME"):
        attrs[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; explicit attrs win.
    resource = Resource.create(attrs)
    sampler = None  # None: the SDK reads OTEL_TRACES_SAMPLER / _ARG (default parentbased_always_on)
    if settings.sample_ratio is not None:
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    processor: SpanProcessor
    if not settings.batch:
        processor = SimpleSpanProcessor(exporter_for(settings))
    elif settings.span_export == "batch":
        # The SDK's processor reads OTEL_BSP_SCHEDULE_DELAY, _MAX_QUEUE_SIZE,
        # _MAX_EXPORT_BATCH_SIZE and _EXPORT_TIMEOUT itself.
        processor = BatchSpanProcessor(exporter_for(settings))
    else:
        # Built once here and dropped, so that a bad configuration fails at start-up with the
        # exporter's own error, not in a child process restarted every few seconds.
        exporter_for(settings).shutdown()
        # Batches are encoded and exported by a child process (span_offload.py: the OTLP
        # encoding held the GIL long enough to delay the event loop's tokens).
        processor = OffloadSpanProcessor(
            dataclasses.asdict(settings), resource, log_setup=logs.current_setup()
        )
    provider.add_span_processor(processor)
    if not _global_set:
        trace.set_tracer_provider(provider)
        _global_set = True
    _provider = provider
    _tracer = provider.get_tracer("autoglm.server")
    log.info(
        "tracing on: service %s, spans exported by %s",
        resource.attributes.get(SERVICE_NAME),
        type(processor).__name__,
    )
    return provider


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Flush pending spans and stop exporting; safe to call when tracing is off."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


# --- gRPC interceptors -------------------------------------------------------------------------


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The OTel grpc.aio server interceptor (health and reflection excluded), or [] when off.

    Put it FIRST in the server's interceptor list so that refused calls (auth) are traced and
    the caller's `traceparent` is the parent of everything the façade does."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider, filter_=_traced_server_method)]


_UNTRACED_PREFIXES = tuple(f"/{s}/" for s in _UNTRACED_SERVICES)


def _traced_server_method(details: grpc.HandlerCallDetails) -> bool:
    """The server interceptor's filter, run on every call: one prefix test. (The
    instrumentation's composable `filters` parse the method name with isinstance checks against
    typing protocols: ~3 % of the event loop's time per request in a profile here.)"""
    method = details.method
    if isinstance(method, bytes):
        method = method.decode("ascii", "replace")
    return not method.startswith(_UNTRACED_PREFIXES)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """OTel grpc.aio client interceptors (readiness polling and health excluded), or [] when off.

    They inject `traceparent` themselves: do not also add `inject_traceparent()` on such a
    channel. NOT for EngineClient's ModelStreamInfer: the stream-stream interceptor ends its span
    only when the response stream is read to its end, and EngineClient stops reading at Triton's
    final response (and cancels an unfinished call), so the span never ends and is never
    exported (seen with instrumentation-grpc 0.66b2, when EngineClient cancelled every call).
    Use `engine_span()` + `inject_traceparent()` there."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors
    from opentelemetry.instrumentation.grpc.filters import (
        any_of,
        method_name,
        negate,
        service_name,
    )

    skip = negate(
        any_of(
            *(method_name(m) for m in _UNTRACED_TRITON_METHODS),
            *(service_name(s) for s in _UNTRACED_SERVICES),
        )
    )
    return list(aio_client_interceptors(tracer_provider=_provider, filter_=skip))


# --- the HTTP front door -------------------------------------------------------------------------


class HttpServerSpan:
    """The SERVER span of one HTTP call, parented by the caller's W3C `traceparent`.

    Not a `with` block: a streamed response outlives its handler. `attach()` makes it current
    (the generation span and the Triton call become its children, and `traceparent` continues
    into Triton); `end(status)` detaches and closes it when the last byte is sent, in the same
    task (a context token can only be detached in the context that attached it).
    Attributes follow the HTTP semantic conventions (`http.request.method`, `http.route`,
    `http.response.status_code`; 5xx marks it ERROR).
    """

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: object = None

    def attach(self) -> None:
        if self._span is not trace.INVALID_SPAN and self._token is None:
            self._token = context.attach(trace.set_span_in_context(self._span))

    def detach(self) -> None:
        if self._token is not None:
            context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    def end(self, status: int) -> None:
        self.detach()
        span = self._span
        if span is trace.INVALID_SPAN or not span.is_recording():
            return
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, str(status)))
        span.end()


def http_server_span(method: str, route: str, headers: dict[str, str]) -> HttpServerSpan:
    """Start the server span of an HTTP call (`headers`: lower-case names → values); a no-op
    span when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return HttpServerSpan(trace.INVALID_SPAN)
    from opentelemetry.propagate import extract

    parent = extract(headers)
    span = tracer.start_span(
        f"{method} {route}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route},
        record_exception=False,
        set_status_on_exception=False,
    )
    return HttpServerSpan(span)


# --- spans with GenAI semantic conventions -----------------------------------------------------
# https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ (attribute names below).


def generation_span(
    *,
    model: str,
    request_id: str = "",
    operation: str = "text_completion",
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
) -> AbstractContextManager[Span]:
    """A span `"{operation} {model}"` around one generation, child of the current (RPC) span.

    Set usage and finish reasons with `set_usage` / `set_finish` before leaving. An exception
    marks the span ERROR with only the exception's type (`error.type`), not its message."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": GEN_AI_SYSTEM,
        "gen_ai.request.model": model,
    }
    if request_id:
        attrs["gen_ai.response.id"] = request_id
    if max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = max_tokens
    if temperature is not None:
        attrs["gen_ai.request.temperature"] = temperature
    if top_p is not None:
        attrs["gen_ai.request.top_p"] = top_p
    return _CurrentSpan(tracer, f"{operation} {model}", SpanKind.INTERNAL, attrs)


def engine_span(
    triton_model: str, method: str = "ModelStreamInfer"
) -> AbstractContextManager[Span]:
    """A CLIENT span for the call to Triton; call `inject_traceparent()` inside it so that
    Triton's own spans (InferRequest → <model> → compute) become its children."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    attrs = {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": method,
        "autoglm.triton.model": triton_model,
    }
    return _CurrentSpan(tracer, f"triton {method} {triton_model}", SpanKind.CLIENT, attrs)


def annotate(attrs: dict[str, Any]) -> None:
    """Put `attrs` on the current span: the RPC's server span in the interceptors and the
    servicer, the generation span inside `generation_span`. Nothing when tracing is off or the
    request is sampled out.

    Steps that are decisions or take microseconds (the auth decision, admission, tokenization)
    are attributes rather than child spans: a span costs about as much CPU as tokenizing a
    prompt, and those three spans were ~8 % of the façade's CPU per request, most of it in the
    span exporter process (measured with one-token requests on the 2-core development VM)."""
    if _tracer is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attrs)


_OFF: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)  # tracing off: no work


class _CurrentSpan:
    """A new span, current while the block runs, ended when it leaves: `start_as_current_span`
    without its three nested generator-based context managers (several spans per request made
    them a measurable part of the façade's CPU per request, docs/benchmarks.md).

    record_exception/set_status_on_exception are off: both would copy str(exc) into the span;
    an exception marks it ERROR with the exception's type only (`error.type`).
    """

    __slots__ = ("_span", "_token")

    def __init__(
        self, tracer: trace.Tracer, name: str, kind: SpanKind, attrs: dict[str, Any]
    ) -> None:
        self._span = tracer.start_span(
            name, kind=kind, attributes=attrs, record_exception=False, set_status_on_exception=False
        )
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            if exc_type is not None:
                span.set_attribute("error.type", exc_type.__name__)
                span.set_status(Status(StatusCode.ERROR, exc_type.__name__))
        finally:
            context.detach(self._token)  # type: ignore[arg-type]
            span.end()


def set_usage(span: Span, *, input_tokens: int, output_tokens: int) -> None:
    if span.is_recording():
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


def set_finish(span: Span, finish_reasons: Sequence[str], response_id: str = "") -> None:
    if span.is_recording():
        span.set_attribute("gen_ai.response.finish_reasons", list(finish_reasons))
        if response_id:
            span.set_attribute("gen_ai.response.id", response_id)


def first_token(span: Span | None = None, *, timestamp_ns: int | None = None) -> None:
    """Mark the first generated token on `span` (default: the current span) as an event, so a
    trace view shows TTFT inside the generation span. `timestamp_ns` (time.time_ns) = when it
    arrived from the engine, if that was before now (the relay may write it later)."""
    if _tracer is None:
        return
    span = span if span is not None else trace.get_current_span()
    if span.is_recording():
        span.add_event(FIRST_TOKEN_EVENT, timestamp=timestamp_ns)


# --- ids and propagation -----------------------------------------------------------------------


def current_trace_id() -> str:
    """The current trace id as 32 hex digits ('' outside a trace). Sampled-out requests have
    one too (the backend just never receives their spans)."""
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""


def inject_traceparent() -> list[tuple[str, str]]:
    """W3C `traceparent` (+ `tracestate`) gRPC metadata for the current span, [] when tracing
    is off or there is no current span. Add it to the Triton call's metadata (gRPC metadata
    keys are lower case, as W3C Trace Context names them)."""
    if _tracer is None:
        return []
    carrier: dict[str, str] = {}
    inject(carrier)
    return [(k.lower(), v) for k, v in carrier.items()]


# Server-side failures by the OTel RPC conventions; caller errors (INVALID_ARGUMENT, NOT_FOUND…)
# leave the server span's status unset and are told by rpc.grpc.status_code alone.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def record_status(code: grpc.StatusCode) -> None:
    """Put the RPC's final status on the current (server) span.

    The instrumentation's aio server interceptor does not see a status set through
    `context.abort_with_status` (it records 0), so the servicer records it itself.
    """
    span = trace.get_current_span()
    if _tracer is None or not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code.name))
