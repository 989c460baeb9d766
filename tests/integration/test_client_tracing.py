"""One trace from the Python client to Triton: client span → façade → engine → Triton's spans.

The client only uses the OpenTelemetry API, so its spans go to the process's global provider:
here the one `tracing_on` installed (exporting to the stand-in receiver, like the façade)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from autoglm.client import AsyncClient, Client, ClientConfig, Completion, InvalidArgumentError
from autoglm.client import _tracing as client_tracing
from autoglm.server.telemetry import tracing
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

from .conftest import MODEL, Facade

pytestmark = pytest.mark.integration

RPC = "autoglm.v1.TextGeneration/"


@pytest.fixture(scope="module")
def provider(facade: Facade) -> Iterator[TracerProvider]:
    """The provider the client's spans go to: the global one, set by `tracing_on`.

    OpenTelemetry sets the global provider once per process; if an earlier test module did it
    first, that provider may be shut down, so the client's tracer is pointed at the façade's."""
    current = tracing._provider
    assert current is not None, "tracing_on did not set up tracing"
    if trace.get_tracer_provider() is current:
        yield current
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client_tracing, "_tracer", current.get_tracer("autoglm.client"))
        yield current


def _client_span(spans: list[ReceivedSpan], method: str, request_id: str) -> ReceivedSpan | None:
    for s in spans:
        if s.name == RPC + method and s.attributes.get("gen_ai.response.id") == request_id:
            return s
    return None


def _whole_trace(method: str, request_id: str):
    """A wait_for predicate: the client's trace holds every span down to Triton's compute."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        root = _client_span(spans, method, request_id)
        if root is None:
            return False
        names = {s.name for s in spans if s.trace_id == root.trace_id}
        # Triton exports its spans (InferRequest → model → compute) separately; its InferRequest
        # span sometimes never arrives (Triton 2.51), so the model and compute spans are required.
        return {"/" + RPC + method, MODEL, "compute"} <= names

    return complete


def _check_one_trace(
    spans: list[ReceivedSpan], method: str, request_id: str, trace_id: str
) -> None:
    root = _client_span(spans, method, request_id)
    assert root is not None
    tree = [s for s in spans if s.trace_id == root.trace_id]
    by_id = {s.span_id: s for s in tree}
    server = next(s for s in tree if s.name == "/" + RPC + method)
    generation = next(s for s in tree if s.name.startswith("text_completion "))
    engine = next(s for s in tree if s.name.startswith("triton ModelStreamInfer"))

    # The client's span is the root, and the façade continues its trace.
    assert root.parent_span_id == ""
    assert server.parent_span_id == root.span_id
    assert generation.parent_span_id == server.span_id
    assert engine.parent_span_id == generation.span_id
    triton_spans = [s for s in tree if s.service_name == "triton"]
    assert {MODEL, "compute"} <= {s.name for s in triton_spans}
    for s in triton_spans:  # each hangs (through its parents) from the façade's engine span
        node = s
        while node.parent_span_id in by_id and node.span_id != engine.span_id:
            node = by_id[node.parent_span_id]
        if node.span_id != engine.span_id:  # only a missing InferRequest may break the chain
            assert node.name == MODEL and "InferRequest" not in {t.name for t in tree}, s.name

    attrs = root.attributes
    assert attrs["rpc.system"] == "grpc"
    assert attrs["rpc.service"] == "autoglm.v1.TextGeneration"
    assert attrs["rpc.method"] == method
    assert attrs["rpc.grpc.status_code"] == 0
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ["length"]
    assert root.status == "UNSET"
    # What the caller was told is the trace the spans are in.
    assert trace_id == root.trace_id


def _result_trace_id(streaming: bool, result: Completion | list) -> str:
    if streaming:
        assert isinstance(result, list) and result[-1].finish_reason == "length"
        assert all(d.trace_id == "" for d in result[:-1])  # only the last delta carries it
        return result[-1].trace_id
    assert isinstance(result, Completion)
    return result.trace_id


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_sync_client_call_is_one_trace(
    client: Client, otlp: OtlpReceiver, provider: TracerProvider, streaming: bool
) -> None:
    method = "GenerateStream" if streaming else "Generate"
    prompt = "The capital of France is"
    result: Completion | list
    # Triton 2.51 now and then starts a trace of its own for a propagated request (busy
    # machine, first requests after start-up): up to 3 attempts, one must join the trace.
    for attempt in range(3):
        rid = f"client-trace-sync-{'stream' if streaming else 'unary'}-{attempt}"
        kw = dict(max_tokens=3, request_id=rid, temperature=0.0)  # greedy: 3 tokens, "length"
        if streaming:
            result = list(client.generate_stream(prompt, **kw))
        else:
            result = client.generate(prompt, **kw)
        try:
            spans = otlp.wait_for(_whole_trace(method, rid), timeout=15)
            break
        except TimeoutError:
            if attempt == 2:
                raise
    _check_one_trace(spans, method, rid, _result_trace_id(streaming, result))


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_async_client_call_is_one_trace(
    client_config: ClientConfig, otlp: OtlpReceiver, provider: TracerProvider, streaming: bool
) -> None:
    method = "GenerateStream" if streaming else "Generate"
    prompt = "The capital of France is"
    result: Completion | list
    async with AsyncClient(client_config) as aclient:
        for attempt in range(3):  # see the sync test
            rid = f"client-trace-async-{'stream' if streaming else 'unary'}-{attempt}"
            kw = dict(max_tokens=3, request_id=rid, temperature=0.0)
            if streaming:
                result = [d async for d in aclient.generate_stream(prompt, **kw)]
            else:
                result = await aclient.generate(prompt, **kw)
            try:
                spans = await asyncio.to_thread(otlp.wait_for, _whole_trace(method, rid), 15)
                break
            except TimeoutError:
                if attempt == 2:
                    raise
    _check_one_trace(spans, method, rid, _result_trace_id(streaming, result))


def test_failed_call_gives_an_error_client_span(
    client: Client, otlp: OtlpReceiver, provider: TracerProvider
) -> None:
    # A parent span of the test's own, so that this call's trace is known exactly.
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller, pytest.raises(InvalidArgumentError):
        client.generate("hi", top_p=7.0)
    trace_id = trace.format_trace_id(caller.get_span_context().trace_id)
    server_name = "/" + RPC + "Generate"

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {"caller", RPC + "Generate", server_name} <= names

    tree = [s for s in otlp.wait_for(complete, timeout=30) if s.trace_id == trace_id]
    caller_span = next(s for s in tree if s.name == "caller")
    client_span = next(s for s in tree if s.name == RPC + "Generate")
    server = next(s for s in tree if s.name == server_name)
    assert client_span.parent_span_id == caller_span.span_id
    assert server.parent_span_id == client_span.span_id
    assert client_span.status == "ERROR"
    assert client_span.attributes["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
    assert client_span.attributes["error.type"] == "InvalidArgumentError"
    assert server.attributes["rpc.grpc.status_code"] == 3
    # Validation failed before any engine call.
    assert not [s for s in tree if s.service_name == "triton"]
