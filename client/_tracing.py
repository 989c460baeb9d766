"""Client spans and W3C trace-context propagation, with the OpenTelemetry API only.

The client never configures OpenTelemetry: it asks the global provider for a tracer, which is
a no-op until the application installs an SDK (then the same ProxyTracer starts recording).
So a caller without an SDK pays one non-recording span object per RPC and nothing per streamed
message. Span names and attributes follow the OTel RPC and GenAI conventions
(https://opentelemetry.io/docs/specs/semconv/rpc/grpc/,
https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/). Like the server's spans,
they hold counts and ids only: never prompt text, metadata values or error messages (a status
message can echo caller input).

One span covers a whole call, retries included: each retry is a `retry` event on it (attempt,
pause, status code), and also a DEBUG line on the `autoglm.client` logger.

The span is not made the current span: streams are generators, and a context attached in a
generator would leak into (or be detached from) whatever the consumer runs between `next()`
calls. The span's context is only injected into the call's metadata.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from autoglm.client._exceptions import AutoGLMError
from autoglm.client._version import __version__

__all__ = ["SERVICE", "TRACE_ID_KEY", "RpcSpan", "operation_for", "trace_id_from"]

SERVICE = "autoglm.v1.TextGeneration"
TRACE_ID_KEY = "x-trace-id"  # trailing metadata the server sets (server/api/service.py)

_log = logging.getLogger("autoglm.client")

# A ProxyTracer: it follows whatever provider the application sets later, even after import.
_tracer = trace.get_tracer("autoglm.client", __version__)

Metadata = tuple[tuple[str, str], ...]

# The caller stopped the call (closed the stream, cancelled the task, Ctrl-C): recorded as
# CANCELLED, but not as an ERROR, since nothing failed.
_CALLER_STOPS = (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt)
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_OK = grpc.StatusCode.OK.value[0]


def trace_id_from(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The server's `x-trace-id` trailer ('' when absent, e.g. tracing off on the server)."""
    for key, value in metadata or ():
        if key == TRACE_ID_KEY and isinstance(value, str):
            return value
    return ""


class RpcSpan:
    """The CLIENT span of one RPC, as a context manager (sync, and around `await` too).

    `metadata` is the call's metadata with `traceparent` (+ `tracestate`, `baggage`) added.
    Leaving the block ends the span; an exception marks it (see `_record_exception`). `end()`
    may be called earlier, e.g. before handing a stream's last delta to the consumer.
    """

    __slots__ = ("_done", "_method", "metadata", "span")

    def __init__(
        self,
        method: str,
        metadata: Metadata,
        *,
        model: str | None = None,
        operation: str | None = None,
    ) -> None:
        attrs: dict[str, Any] = {
            "rpc.system": "grpc",
            "rpc.service": SERVICE,
            "rpc.method": method,
        }
        if model:
            attrs["gen_ai.request.model"] = model
        if operation:
            attrs["gen_ai.operation.name"] = operation
            attrs["gen_ai.system"] = "autoglm"  # the server's value (server/telemetry/tracing.py)
        self.span = _tracer.start_span(
            f"{SERVICE}/{method}", kind=SpanKind.CLIENT, attributes=attrs
        )
        self._done = False
        self._method = method
        # Without an SDK the span is invalid: inject the caller's current context instead, so
        # a trace the application propagates (without recording) still reaches the server.
        ctx = (
            trace.set_span_in_context(self.span) if self.span.get_span_context().is_valid else None
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)
        # gRPC metadata keys must be lower case; W3C names already are.
        self.metadata = metadata + tuple((k.lower(), v) for k, v in carrier.items())

    def __enter__(self) -> RpcSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not self._done:
            self._record_exception(exc)
        self.end()

    def succeeded(
        self,
        *,
        response_id: str = "",
        finish_reason: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Record an OK status and what the response said (call once, at the end)."""
        span = self.span
        self._done = True
        if not span.is_recording():
            return
        span.set_attribute("rpc.grpc.status_code", _OK)
        if response_id:
            span.set_attribute("gen_ai.response.id", response_id)
        if finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)

    def attempt_failed(
        self, error: AutoGLMError, *, attempt: int, of: int, delay: float | None
    ) -> None:
        """Attempt `attempt` (of at most `of`) failed with `error`; it is retried after `delay`
        seconds, or not (None). One span covers the whole call, so a retry is an event on it;
        the debug log line says the same, with the status message, for callers without tracing.
        A call that fails at its first attempt and is not retried records nothing here."""
        code = error.code.name if error.code is not None else type(error).__name__
        if delay is None:
            if attempt > 1:
                _log.debug("%s failed after %d attempts (%s)", self._method, attempt, code)
            return
        _log.debug(
            "%s attempt %d of %d failed (%s: %s); retrying in %.3f s",
            self._method,
            attempt,
            of,
            code,
            error.message,
            delay,
        )
        if self.span.is_recording():
            attrs: dict[str, Any] = {
                "autoglm.retry.attempt": attempt,
                "autoglm.retry.delay_s": delay,
            }
            if error.code is not None:
                attrs["rpc.grpc.status_code"] = error.code.value[0]
            self.span.add_event("retry", attrs)

    def end(self) -> None:
        """End the span once; later calls (the `with` block's exit) do nothing."""
        if self.span.is_recording():
            self.span.end()
        self._done = True

    def _record_exception(self, exc: BaseException) -> None:
        span = self.span
        if not span.is_recording():
            return
        if isinstance(exc, _CALLER_STOPS):
            span.set_attribute("rpc.grpc.status_code", _CANCELLED)
            return
        # By the RPC conventions a client span is an ERROR for every non-OK status code.
        code = exc.code if isinstance(exc, AutoGLMError) else None
        if code is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, code.name if code is not None else None))


def operation_for(messages: Sequence[object]) -> str:
    """gen_ai.operation.name: "chat" for a messages request, else "text_completion"."""
    return "chat" if messages else "text_completion"
