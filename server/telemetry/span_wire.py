"""Finished spans as plain values and back: the wire to the façade's span exporter process.

`flatten` turns a finished `ReadableSpan` into a tuple of str / int / float / bool / bytes /
tuple / dict / None, which `marshal` writes at C speed; `rebuild` (in the exporter process,
span_export_child.py) turns it back into a `ReadableSpan` that the OTLP encoder encodes exactly
as it encodes the original: ids, parent (and whether it was remote), trace state, kind, times,
attributes, events, links, status, instrumentation scope and the dropped counts
(tests/server/telemetry/test_span_wire.py compares the two encodings byte for byte).

Frames on the pipe are a 4-byte big-endian length and a `marshal` payload. marshal is for
trusted data only: both ends are this package, over an anonymous pipe between a process and the
child it started.
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

__all__ = ["WIRE_VERSION", "FrameReader", "ScopeCache", "flatten", "frame", "rebuild"]

WIRE_VERSION = 1  # sent in the first frame; a child of another version refuses to start
_LEN = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # a longer length prefix means a corrupt stream, not a big batch

Flat = tuple[Any, ...]


def frame(message: object) -> bytes:
    body = marshal.dumps(message)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Reads `frame`d messages from a binary stream; None at a clean end of the stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def _exactly(self, n: int) -> bytes | None:
        chunks: list[bytes] = []
        while n:
            chunk = self._stream.read(n)
            if not chunk:
                if chunks:
                    raise EOFError("span wire: the stream ended inside a frame")
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def read(self) -> Any:
        head = self._exactly(_LEN.size)
        if head is None:
            return None
        (size,) = _LEN.unpack(head)
        if size > MAX_FRAME:
            raise ValueError(f"span wire: frame of {size} bytes (corrupt stream)")
        body = self._exactly(size)
        if body is None:
            raise EOFError("span wire: the stream ended inside a frame")
        return marshal.loads(body)


def _ctx(c: SpanContext) -> Flat:
    ts = c.trace_state
    return (c.trace_id, c.span_id, int(c.trace_flags), c.is_remote, ts.to_header() if ts else "")


def _attrs(a: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(a) if a else None


def flatten(span: ReadableSpan) -> Flat:
    """The span as plain values (the hot path: one call per finished span, on the event loop)."""
    parent = span.parent
    scope = span.instrumentation_scope
    status = span.status
    return (
        span.name,
        _ctx(span.context),  # type: ignore[arg-type]
        _ctx(parent) if parent is not None else None,
        span.kind.value,
        span.start_time,
        span.end_time,
        _attrs(span.attributes),
        tuple(
            (e.name, e.timestamp, _attrs(e.attributes), e.dropped_attributes) for e in span.events
        )
        or None,
        tuple((_ctx(x.context), _attrs(x.attributes), x.dropped_attributes) for x in span.links)
        or None,
        status.status_code.value,
        status.description,
        (scope.name, scope.version, scope.schema_url, _attrs(scope.attributes))
        if scope is not None
        else None,
        span.dropped_attributes,
        span.dropped_events,
        span.dropped_links,
    )


def _span_context(flat: Flat) -> SpanContext:
    trace_id, span_id, flags, remote, state = flat
    return SpanContext(
        trace_id,
        span_id,
        is_remote=remote,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState.from_header([state]) if state else None,
    )


def _bounded(attrs: dict[str, Any] | None, dropped: int) -> Mapping[str, Any] | None:
    """The attributes, carrying their dropped count (which the encoder reads) when there is one."""
    if not dropped:
        return attrs
    bounded = BoundedAttributes(maxlen=None, attributes=attrs, immutable=True)
    bounded.dropped = dropped
    return bounded


def _dropped_list(items: list[Any], dropped: int) -> list[Any] | BoundedList:
    if not dropped:
        return items
    bounded = BoundedList(None)
    bounded.extend(items)
    bounded.dropped = dropped
    return bounded


class ScopeCache:
    """Instrumentation scopes by value, so that a batch groups under one scope object each."""

    def __init__(self) -> None:
        self._scopes: dict[Flat, InstrumentationScope] = {}

    def get(self, flat: Flat | None) -> InstrumentationScope | None:
        if flat is None:
            return None
        key = (flat[0], flat[1], flat[2], tuple(sorted((flat[3] or {}).items())))
        scope = self._scopes.get(key)
        if scope is None:
            name, version, schema_url, attributes = flat
            scope = InstrumentationScope(name, version, schema_url, attributes)
            self._scopes[key] = scope
        return scope


def rebuild(flat: Flat, resource: Resource, scopes: ScopeCache) -> ReadableSpan:
    """The `ReadableSpan` that `flatten` was given, bound to `resource` (the process's own)."""
    (
        name,
        context,
        parent,
        kind,
        start,
        end,
        attrs,
        events,
        links,
        status_code,
        status_description,
        scope,
        dropped_attributes,
        dropped_events,
        dropped_links,
    ) = flat
    return ReadableSpan(
        name=name,
        context=_span_context(context),
        parent=_span_context(parent) if parent is not None else None,
        resource=resource,
        attributes=_bounded(attrs, dropped_attributes),
        events=_dropped_list(
            [Event(n, _bounded(a, d), timestamp=t) for n, t, a, d in events or ()], dropped_events
        ),
        links=_dropped_list(
            [Link(_span_context(c), _bounded(a, d)) for c, a, d in links or ()], dropped_links
        ),
        kind=SpanKind(kind),
        status=Status(StatusCode(status_code), status_description),
        start_time=start,
        end_time=end,
        instrumentation_scope=scopes.get(scope),
    )
