"""Client spans and trace propagation, without a server: the generated stub is swapped for the
stand-ins of test_client.py and the client's tracer for one of an in-memory SDK provider (the
global provider can be set once per process, so tests do not touch it)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from autoglm.client import AsyncClient, ClientConfig, InvalidArgumentError, _tracing
from autoglm.v1 import text_generation_pb2 as pb
from tests.client.conftest import TOKEN
from tests.client.test_client import TRACE_ID, TRAILERS, Method, StreamCall, _client

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[0-9a-f]$")
TOKENS = [
    pb.GenerateResponse(request_id="r", text="Pa", token_ids=[1]),
    pb.GenerateResponse(request_id="r", text="ris", token_ids=[2]),
    pb.GenerateResponse(
        request_id="r",
        text=".",
        token_ids=[3],
        finish_reason=pb.FINISH_REASON_STOP,
        usage=pb.Usage(prompt_tokens=6, completion_tokens=3),
    ),
]
FULL = pb.GenerateResponse(
    request_id="r",
    model="m",
    text="Paris.",
    token_ids=[1, 2, 3],
    finish_reason=pb.FINISH_REASON_LENGTH,
    usage=pb.Usage(prompt_tokens=6, completion_tokens=3),
)


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(_tracing, "_tracer", provider.get_tracer("autoglm.client"))
    yield spans
    provider.shutdown()


def _only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def _traceparent(metadata: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    values = [v for k, v in metadata if k == "traceparent"]
    assert len(values) == 1, metadata
    match = TRACEPARENT.match(values[0])
    assert match, values[0]
    return match.group(1), match.group(2)


@pytest.fixture
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's tracer as it is in an application without the SDK (the no-op one), whatever
    global provider an earlier test in this process installed (server tests do)."""
    monkeypatch.setattr(_tracing, "_tracer", trace.NoOpTracer())


@pytest.mark.usefixtures("no_sdk")
def test_without_an_sdk_nothing_is_added() -> None:
    client, stub = _client(["only"])
    with client:
        completion = client.generate("Hi", model="m")
    assert stub.calls[0][2]["metadata"] == (("authorization", f"Bearer {TOKEN}"),)
    assert completion.trace_id == TRACE_ID  # the server's trailer, traced client or not


@pytest.mark.usefixtures("no_sdk")
def test_caller_context_is_propagated_without_an_sdk() -> None:
    # An application that forwards a trace without recording (no SDK) still gets it through.
    parent = trace.NonRecordingSpan(
        trace.SpanContext(
            int(TRACE_ID, 16), 0x1234, is_remote=True, trace_flags=trace.TraceFlags(1)
        )
    )
    client, stub = _client(["only"])
    with client, trace.use_span(parent):
        client.generate("Hi", model="m")
    assert _traceparent(stub.calls[0][2]["metadata"]) == (TRACE_ID, f"{0x1234:016x}")


def test_generate_span(exporter: InMemorySpanExporter) -> None:
    client, stub = _client(["only"])
    stub.Generate = Method(stub, "Generate", FULL)
    with client:
        completion = client.generate(messages=[("user", "Hi")], model="m")
    span = _only_span(exporter)
    assert span.name == "autoglm.v1.TextGeneration/Generate"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "autoglm.v1.TextGeneration",
        "rpc.method": "Generate",
        "gen_ai.request.model": "m",
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "autoglm",
        "rpc.grpc.status_code": 0,
        "gen_ai.response.id": "r",
        "gen_ai.response.finish_reasons": ("length",),
        "gen_ai.usage.input_tokens": 6,
        "gen_ai.usage.output_tokens": 3,
    }
    # The span's own context travels in the metadata, after the bearer token.
    metadata = stub.calls[0][2]["metadata"]
    assert metadata[0] == ("authorization", f"Bearer {TOKEN}")
    ctx = span.get_span_context()
    assert _traceparent(metadata) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert completion.trace_id == TRACE_ID


def test_stream_span_ends_before_the_last_delta(exporter: InMemorySpanExporter) -> None:
    client, stub = _client(["only"])
    stub.stream = StreamCall(TOKENS)
    stub.GenerateStream = Method(stub, "GenerateStream", stub.stream)
    with client:
        deltas = []
        for delta in client.generate_stream("Hi", model="m"):
            deltas.append(delta)
            if delta.finish_reason:
                # A consumer may stop here without closing the iterator: nothing is left open.
                assert len(exporter.get_finished_spans()) == 1
    assert [d.text for d in deltas] == ["Pa", "ris", "."]
    assert [d.trace_id for d in deltas] == ["", "", TRACE_ID]
    span = _only_span(exporter)
    assert span.name == "autoglm.v1.TextGeneration/GenerateStream"
    attrs = span.attributes or {}
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["rpc.grpc.status_code"] == 0
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)


def test_closing_a_stream_ends_its_span_as_cancelled(exporter: InMemorySpanExporter) -> None:
    client, stub = _client(["only"])
    stub.stream = StreamCall(TOKENS)
    stub.GenerateStream = Method(stub, "GenerateStream", stub.stream)
    with client, contextlib.closing(client.generate_stream("Hi", model="m")) as stream:
        next(stream)
        assert exporter.get_finished_spans() == ()
    span = _only_span(exporter)
    assert span.attributes and span.attributes["rpc.grpc.status_code"] == 1
    assert span.status.status_code is StatusCode.UNSET  # the caller stopped; nothing failed
    assert stub.stream.cancelled


class FailingCall(StreamCall):
    def __next__(self) -> pb.GenerateResponse:
        error = grpc.RpcError("top_p must be within (0, 1]: 7")
        error.code = lambda: grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        error.details = lambda: "top_p must be within (0, 1]: 7"  # type: ignore[attr-defined]
        raise error


def test_failed_call_marks_the_span_error(exporter: InMemorySpanExporter) -> None:
    client, stub = _client(["only"])
    stub.GenerateStream = Method(stub, "GenerateStream", FailingCall([]))
    with client, pytest.raises(InvalidArgumentError):
        list(client.generate_stream("Hi", model="m"))
    span = _only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "INVALID_ARGUMENT"  # the code, never the message
    assert span.attributes and span.attributes["rpc.grpc.status_code"] == 3
    assert span.attributes["error.type"] == "InvalidArgumentError"
    assert not any("top_p" in str(v) for v in span.attributes.values())


# --- asyncio ----------------------------------------------------------------------------------


class AioUnaryCall:
    def __init__(self, response: Any) -> None:
        self._response = response

    def __await__(self) -> Any:
        async def result() -> Any:
            return self._response

        return result().__await__()

    async def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return TRAILERS


class AioStreamCall:
    def __init__(self, responses: list[pb.GenerateResponse]) -> None:
        self._responses = list(responses)
        self.cancelled = False

    async def read(self) -> Any:
        return self._responses.pop(0) if self._responses else grpc.aio.EOF

    async def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return TRAILERS

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class AioMethod(Method):
    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self._stub.calls.append((self._name, request, kwargs))
        return self._response()  # a new call object per call


async def test_async_client_spans(exporter: InMemorySpanExporter) -> None:
    config = ClientConfig("127.0.0.1:1", None, None, None, TOKEN, insecure=True, model="m")
    async with AsyncClient(config) as client:
        _, stub = _client(["only"])
        stub.Generate = AioMethod(stub, "Generate", lambda: AioUnaryCall(FULL))
        stub.GenerateStream = AioMethod(stub, "GenerateStream", lambda: AioStreamCall(TOKENS))
        client._stub = stub  # type: ignore[assignment]
        completion = await client.generate("Hi")
        deltas = [d async for d in client.generate_stream("Hi")]
    assert completion.trace_id == TRACE_ID
    assert [d.trace_id for d in deltas] == ["", "", TRACE_ID]
    spans = exporter.get_finished_spans()
    assert [s.name.rsplit("/", 1)[1] for s in spans] == ["Generate", "GenerateStream"]
    for span, (_, _, kwargs) in zip(spans, stub.calls, strict=True):
        assert span.attributes and span.attributes["rpc.grpc.status_code"] == 0
        ctx = span.get_span_context()
        assert _traceparent(kwargs["metadata"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
