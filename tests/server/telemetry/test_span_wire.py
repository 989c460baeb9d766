"""span_wire.py: a span flattened and rebuilt encodes to the same OTLP bytes as the original."""

from __future__ import annotations

import io
import marshal
import struct

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from autoglm.server.telemetry.span_wire import FrameReader, ScopeCache, flatten, frame, rebuild

RESOURCE = Resource({"service.name": "autoglm-test", "host.name": "h"}, "https://schema/1")


def finished_spans() -> list[ReadableSpan]:
    """Spans using every field the encoder reads, dropped counts included (small limits)."""
    exporter = InMemorySpanExporter()
    limits = SpanLimits(max_span_attributes=6, max_events=2, max_links=1, max_event_attributes=1)
    provider = TracerProvider(resource=RESOURCE, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("autoglm.test", "1.2.3", schema_url="https://schema/2")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value"), ("other", "x")]),
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    linked = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))
    with tracer.start_as_current_span(
        "/autoglm.v1.TextGeneration/GenerateStream",
        context=parent,
        kind=SpanKind.SERVER,
        links=[Link(linked, {"link.kind": "x"}), Link(linked)],
        attributes={"rpc.system": "grpc", "n": 3, "ratio": 0.5, "flag": True},
    ) as server:
        server.set_attribute("seq", ["a", "b"])
        server.set_attribute("ints", [1, 2, 3])
        server.set_attribute("over", 1)  # the 7th attribute: dropped
        server.set_attribute("over2", 2)
        with tracer.start_as_current_span("text_completion m") as gen:
            gen.add_event("gen_ai.first_token", timestamp=1_700_000_000_123_456_789)
            gen.add_event("e2", {"k": 1, "dropped": 2})
            gen.add_event("e3")  # the third event: dropped
            gen.set_status(Status(StatusCode.ERROR, "InternalError"))
        with tracer.start_as_current_span("triton ModelStreamInfer m", kind=SpanKind.CLIENT):
            pass
    with provider.get_tracer("other.scope").start_as_current_span("plain"):
        pass
    return list(exporter.get_finished_spans())


def test_rebuilt_spans_encode_to_the_same_bytes() -> None:
    spans = finished_spans()
    assert {s.dropped_attributes for s in spans} >= {2}  # the limits did bite
    assert {s.dropped_events for s in spans} >= {1}
    assert {s.dropped_links for s in spans} >= {1}
    scopes = ScopeCache()
    wire = marshal.loads(marshal.dumps([flatten(s) for s in spans]))
    rebuilt = [rebuild(flat, RESOURCE, scopes) for flat in wire]
    original = encode_spans(spans).SerializeToString(deterministic=True)
    assert encode_spans(rebuilt).SerializeToString(deterministic=True) == original


def test_rebuilt_span_keeps_remote_parent_and_trace_state() -> None:
    server = next(s for s in finished_spans() if s.kind is SpanKind.SERVER)
    again = rebuild(flatten(server), RESOURCE, ScopeCache())
    assert again.parent is not None and again.parent.is_remote
    assert again.parent.span_id == 0xB7AD6B7169203331
    assert again.context.trace_state == server.context.trace_state  # type: ignore[union-attr]
    assert [x.context for x in again.links] == [x.context for x in server.links]


def test_scope_cache_groups_equal_scopes() -> None:
    scopes = ScopeCache()
    flats = [flatten(s) for s in finished_spans()]
    rebuilt = [rebuild(f, RESOURCE, scopes) for f in flats]
    assert len({id(s.instrumentation_scope) for s in rebuilt}) == 2  # autoglm.test, other.scope


def test_frames_read_back_in_order() -> None:
    data = frame(("init", 1)) + frame(("spans", [("a", 1)])) + frame(("flush", 7))
    reader = FrameReader(io.BytesIO(data))
    assert reader.read() == ("init", 1)
    assert reader.read() == ("spans", [("a", 1)])
    assert reader.read() == ("flush", 7)
    assert reader.read() is None


def test_truncated_and_corrupt_frames_are_errors() -> None:
    data = frame(("spans", [1, 2, 3]))
    with pytest.raises(EOFError, match="inside a frame"):
        FrameReader(io.BytesIO(data[:-1])).read()
    with pytest.raises(EOFError, match="inside a frame"):
        FrameReader(io.BytesIO(data[:2])).read()
    with pytest.raises(ValueError, match="corrupt"):
        FrameReader(io.BytesIO(struct.pack(">I", 2**31) + b"x")).read()
