"""Tracing, checked on the wire: spans exported over OTLP (gRPC and HTTP) to a stand-in receiver."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry import trace

from autoglm.server.telemetry import tracing
from autoglm.server.telemetry.tracing import TracingSettings
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

# W3C Trace Context §3.2: version 00, trace id, parent id, flags (bit 0 sampled; Level 2 adds
# bit 1 "random trace id", which OTel 1.45 sets: "03").
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
PROMPT = "The capital of France is"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    tracing.shutdown_tracing()  # whatever an earlier test left on
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    yield
    tracing.shutdown_tracing()


@pytest.fixture
def receiver(clean_env: None) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r
        # Flush while the receiver still listens (a failed test leaves tracing on); otherwise
        # the exporter retries against a closed port for seconds.
        tracing.shutdown_tracing()


def settings_for(receiver: OtlpReceiver, protocol: str) -> TracingSettings:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_traces_url
    return TracingSettings(endpoint=endpoint, protocol=protocol, service_name="autoglm-test")


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_span_tree_reaches_receiver(receiver: OtlpReceiver, protocol: str) -> None:
    provider = tracing.setup_tracing(settings_for(receiver, protocol))
    assert provider is not None and tracing.enabled()
    # Stands in for the server interceptor's span of the RPC.
    rpc_tracer = provider.get_tracer("test")
    with rpc_tracer.start_as_current_span("/autoglm.v1.TextGeneration/Generate") as rpc:
        trace_id = tracing.current_trace_id()
        assert trace_id == trace.format_trace_id(rpc.get_span_context().trace_id)
        with tracing.generation_span(
            model="smollm2", request_id="req-1", max_tokens=64, temperature=0.7, top_p=0.9
        ) as gen:
            with tracing.engine_span("smollm2_engine") as eng:
                md = tracing.inject_traceparent()
                tracing.first_token()  # the current span is the engine span here
            tracing.first_token(gen)
            tracing.set_usage(gen, input_tokens=6, output_tokens=3)
            tracing.set_finish(gen, ["stop"], response_id="req-1")

    keys = [k for k, _ in md]
    assert keys == ["traceparent"]
    m = TRACEPARENT.match(md[0][1])
    assert m, md
    assert m.group(1) == trace_id
    assert m.group(2) == trace.format_span_id(eng.get_span_context().span_id)
    assert int(m.group(3), 16) & 0x01  # sampled

    tracing.shutdown_tracing()  # flushes the batch processor
    spans = receiver.wait_for(lambda s: len(s) >= 3, timeout=10)
    assert len(spans) == 3
    assert {s.trace_id for s in spans} == {trace_id}
    assert {s.service_name for s in spans} == {"autoglm-test"}
    assert {s.transport for s in spans} == {protocol}
    n = by_name(spans)
    root = n["/autoglm.v1.TextGeneration/Generate"]
    gen_s = n["text_completion smollm2"]
    eng_s = n["triton ModelStreamInfer smollm2_engine"]
    assert root.parent_span_id == ""
    assert gen_s.parent_span_id == root.span_id
    assert eng_s.parent_span_id == gen_s.span_id
    assert gen_s.attributes == {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.system": "autoglm",
        "gen_ai.request.model": "smollm2",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.usage.input_tokens": 6,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.response.id": "req-1",
    }
    assert gen_s.events == (tracing.FIRST_TOKEN_EVENT,)
    assert eng_s.events == (tracing.FIRST_TOKEN_EVENT,)
    assert all(PROMPT not in repr(s) for s in spans)


def test_error_status_carries_type_not_message(receiver: OtlpReceiver) -> None:
    tracing.setup_tracing(settings_for(receiver, "grpc"))
    with pytest.raises(ValueError), tracing.generation_span(model="m"):
        raise ValueError(f"prompt was {PROMPT!r}")  # messages can echo caller input
    tracing.shutdown_tracing()
    (span,) = receiver.wait_for(lambda s: len(s) >= 1)
    assert span.status == "ERROR"
    assert span.attributes["error.type"] == "ValueError"
    assert PROMPT not in repr(span)


def test_disabled_costs_nothing(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.setup_tracing(settings_for(receiver, "grpc")) is None
    assert not tracing.enabled()
    with tracing.generation_span(model="m") as span, tracing.engine_span("m_engine"):
        assert span is trace.INVALID_SPAN
        tracing.first_token()
        tracing.set_usage(span, input_tokens=1, output_tokens=1)
        assert tracing.inject_traceparent() == []
        assert tracing.current_trace_id() == ""
        tracing.annotate({"autoglm.tokenize_seconds": 0.001})
    assert tracing.server_interceptors() == []
    assert tracing.client_interceptors() == []
    tracing.shutdown_tracing()
    assert receiver.spans == []


def test_annotate_puts_attributes_on_the_current_span(receiver: OtlpReceiver) -> None:
    """The steps' attributes (auth decision, tokenizing time) land on the span that is current."""
    tracing.setup_tracing(settings_for(receiver, "grpc"))
    tracing.annotate({"outside": 1})  # no current span: nothing, and no error
    with tracing.generation_span(model="m"):
        tracing.annotate({"autoglm.tokenize_seconds": 0.001, "enduser.id": "alice"})
    tracing.shutdown_tracing()
    (span,) = receiver.wait_for(lambda s: len(s) >= 1)
    assert span.attributes["autoglm.tokenize_seconds"] == 0.001
    assert span.attributes["enduser.id"] == "alice"
    assert "outside" not in span.attributes


def test_off_without_endpoint(clean_env: None) -> None:
    # The SDK's default endpoint would log export failures on a host without a collector.
    assert tracing.setup_tracing(TracingSettings()) is None
    assert tracing.setup_tracing(TracingSettings(enabled=False, endpoint="http://x:4317")) is None


def test_env_configures_exporter(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.http_traces_url)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    assert tracing.setup_tracing() is not None
    with tracing.generation_span(model="m"):
        pass
    tracing.shutdown_tracing()
    (span,) = receiver.wait_for(lambda s: len(s) >= 1)
    assert (span.service_name, span.transport) == ("from-env", "http/protobuf")


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="protocol"):
        TracingSettings(protocol="http/json").validate()
    with pytest.raises(ValueError, match="sample_ratio"):
        TracingSettings(sample_ratio=2.0).validate()


async def test_grpc_aio_interceptors_link_client_and_server(receiver: OtlpReceiver) -> None:
    """Wire level: client interceptor span → server interceptor span → our generation span; the
    handler sees the caller's trace id; health checks are not traced."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    tracing.setup_tracing(settings_for(receiver, "grpc"))
    seen: list[str] = []

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(tracing.current_trace_id())
        with tracing.generation_span(model="m"):
            pass
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext):
        seen.append(tracing.current_trace_id())
        for _ in range(3):
            yield request

    server = grpc.aio.server(interceptors=tracing.server_interceptors())
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=tracing.client_interceptors()
        ) as ch:
            assert await ch.unary_unary("/test.Echo/Unary")(b"x") == b"x"
            assert [r async for r in ch.unary_stream("/test.Echo/Stream")(b"y")] == [b"y"] * 3
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
    tracing.shutdown_tracing()

    spans = receiver.wait_for(lambda s: len(s) >= 5, timeout=10)
    assert not any("Health" in s.name for s in spans)
    unary_spans = [s for s in spans if s.name == "/test.Echo/Unary"]
    client, srv = sorted(unary_spans, key=lambda s: s.parent_span_id != "")
    assert client.parent_span_id == ""
    assert srv.parent_span_id == client.span_id
    assert seen[0] == client.trace_id
    gen = by_name(spans)["text_completion m"]
    assert gen.parent_span_id == srv.span_id
    stream_spans = [s for s in spans if s.name == "/test.Echo/Stream"]
    assert len(stream_spans) == 2 and len({s.trace_id for s in stream_spans}) == 1
    assert seen[1] == stream_spans[0].trace_id


def test_receiver_accepts_triton_json(receiver: OtlpReceiver) -> None:
    """The shape Triton 2.51 posts (OTLP/HTTP JSON, hex ids, int64 as strings)."""
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "triton"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "0af7651916cd43dd8448eb211c80319c",
                                "spanId": "b7ad6b7169203331",
                                "parentSpanId": "00f067aa0ba902b7",
                                "name": "InferRequest",
                                "attributes": [
                                    {"key": "triton.model_name", "value": {"stringValue": "m"}},
                                    {"key": "triton.model_version", "value": {"intValue": "1"}},
                                ],
                                "events": [{"name": "REQUEST_START"}],
                                "status": {"code": 0},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    req = urllib.request.Request(
        receiver.http_traces_url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    (span,) = receiver.spans
    assert span == ReceivedSpan(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_span_id="00f067aa0ba902b7",
        name="InferRequest",
        attributes={"triton.model_name": "m", "triton.model_version": 1},
        events=("REQUEST_START",),
        status="UNSET",
        service_name="triton",
        transport="http/json",
    )
    assert receiver.triton_url == f"127.0.0.1:{receiver.http_port}/v1/traces"


async def test_engine_call_pattern_propagates_to_triton_stand_in(receiver: OtlpReceiver) -> None:
    """EngineClient's pattern: raw stream-stream call, write once, read to the final response,
    cancel. With `engine_span` + `inject_traceparent` metadata, the callee's span (here a
    stand-in server with the OTel server interceptor, as Triton does with `traceparent`) is a
    child of the engine span, and every span ends."""
    tracing.setup_tracing(settings_for(receiver, "grpc"))

    async def bidi(requests, context: grpc.aio.ServicerContext):
        async for req in requests:
            yield req
            yield b"final"

    server = grpc.aio.server(interceptors=tracing.server_interceptors())
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(bidi)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with tracing.generation_span(model="m"), tracing.engine_span("m_engine") as eng:
                call = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(
                    metadata=tracing.inject_traceparent()
                )
                await call.write(b"x")
                while await call.read() != b"final":
                    pass
                call.cancel()
    finally:
        await server.stop(None)
    tracing.shutdown_tracing()
    spans = receiver.wait_for(lambda s: len(s) >= 3, timeout=10)
    n = by_name(spans)
    callee = n["/inference.GRPCInferenceService/ModelStreamInfer"]
    assert callee.parent_span_id == trace.format_span_id(eng.get_span_context().span_id)
    assert n["triton ModelStreamInfer m_engine"].parent_span_id == n["text_completion m"].span_id
