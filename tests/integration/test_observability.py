"""Traces, metrics and audit records from real traffic through the façade and the real Triton."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from autoglm.client import AuthenticationError, Client, ClientConfig, InvalidArgumentError
from autoglm.server.audit.verify import verify_dir
from autoglm.server.devstack.triton_process import TritonProcess
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

from .conftest import MODEL, Facade, scrape

pytestmark = pytest.mark.integration


def _is_generation(span: ReceivedSpan, request_id: str) -> bool:
    # The façade's generation span (the client's span carries the response id too).
    return span.name.startswith("text_completion ") and (
        span.attributes.get("gen_ai.response.id") == request_id
    )


def _trace_of(spans: list[ReceivedSpan], request_id: str) -> list[ReceivedSpan]:
    roots = [s for s in spans if _is_generation(s, request_id)]
    if not roots:
        return []
    return [s for s in spans if s.trace_id == roots[0].trace_id]


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_one_trace_from_facade_into_triton(
    client: Client, otlp: OtlpReceiver, streaming: bool
) -> None:
    rpc = "/autoglm.v1.TextGeneration/Generate" + ("Stream" if streaming else "")

    def complete(rid: str) -> Callable[[list[ReceivedSpan]], bool]:
        # Triton exports its spans (InferRequest → model → compute) separately. Its
        # InferRequest span sometimes never arrives (seen with Triton 2.51 when the stream is
        # closed right after the final response), so the model and compute spans are required.
        return lambda spans: {rpc, MODEL, "compute"} <= {s.name for s in _trace_of(spans, rid)}

    # Triton 2.51 now and then starts a trace of its own for a propagated request (seen on a
    # busy machine, mostly for the first requests after start-up): up to 3 attempts, and at
    # least one must join the caller's trace.
    for attempt in range(3):
        rid = f"trace-{'stream' if streaming else 'unary'}-{attempt}"
        kwargs = dict(max_tokens=3, request_id=rid, temperature=0.0)
        if streaming:
            generated = list(client.generate_stream("The capital of France is", **kwargs))[-1]
        else:
            generated = client.generate("The capital of France is", **kwargs)
        assert generated.completion_tokens == 3  # greedy: " Paris." and on, no early end
        try:
            spans = _trace_of(otlp.wait_for(complete(rid), timeout=15), rid)
            break
        except TimeoutError:
            if attempt == 2:
                raise
    by_id = {s.span_id: s for s in spans}
    server = next(s for s in spans if s.name.startswith("/autoglm.v1.TextGeneration/"))
    generation = next(s for s in spans if _is_generation(s, rid))
    engine = next(
        s
        for s in spans
        if s.parent_span_id == generation.span_id and s.name.startswith("triton ModelStreamInfer")
    )
    # Three façade spans per request: the steps (auth, admission, tokenization) are attributes.
    under_server = [s.name for s in spans if s.parent_span_id == server.span_id]
    under_generation = [s.name for s in spans if s.parent_span_id == generation.span_id]
    assert (under_server, under_generation) == ([generation.name], [engine.name])
    assert server.attributes["autoglm.auth.result"] == "OK"
    assert server.attributes["enduser.id"] == "integration-tests"
    assert server.attributes["autoglm.auth.token_id"]
    assert generation.attributes["autoglm.tokenize_seconds"] >= 0
    assert generation.attributes["autoglm.detokenize_seconds"] >= 0
    triton_spans = [s for s in spans if s.service_name == "triton"]
    assert generation.parent_span_id == server.span_id
    assert triton_spans, "Triton's own spans did not join the trace"
    # Every Triton span hangs (through its parents) from the façade's engine span.
    for s in triton_spans:
        node = s
        while node.parent_span_id in by_id and node.span_id != engine.span_id:
            node = by_id[node.parent_span_id]
        if node.span_id != engine.span_id:
            # Only a missing InferRequest span may break the chain (see above).
            assert node.name == MODEL and "InferRequest" not in {t.name for t in spans}, s.name
    assert all(s.trace_id == server.trace_id for s in spans)
    attrs = generation.attributes
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert "gen_ai.first_token" in generation.events
    # No prompt text anywhere in the spans.
    assert not any("capital" in str(v) for s in spans for v in s.attributes.values())


def test_failed_call_is_traced_with_its_status(client: Client, otlp: OtlpReceiver) -> None:
    otlp.clear()
    with pytest.raises(InvalidArgumentError):
        client.generate("hi", top_p=7.0)
    spans = otlp.wait_for(
        lambda ss: any(s.name == "/autoglm.v1.TextGeneration/Generate" for s in ss), timeout=10
    )
    server = next(s for s in spans if s.name == "/autoglm.v1.TextGeneration/Generate")
    assert server.attributes["autoglm.auth.result"] == "OK"
    # INVALID_ARGUMENT is the caller's error: recorded as the gRPC status code (3); by the OTel
    # RPC conventions a server span is marked ERROR only for server-side codes.
    assert server.attributes.get("rpc.grpc.status_code") == 3
    # Validation failed before any engine call: no Triton span in this trace.
    assert not [s for s in spans if s.trace_id == server.trace_id and s.service_name == "triton"]


def test_metrics_count_real_traffic(client: Client, facade: Facade, triton: TritonProcess) -> None:
    url = facade.metrics_url
    labels = {"model": MODEL, "rpc": "Generate", "code": "OK"}
    before = scrape(url, "autoglm_requests_total", **labels)
    bad_before = scrape(
        url, "autoglm_requests_total", model=MODEL, rpc="Generate", code="INVALID_ARGUMENT"
    )
    triton_before = scrape(triton.metrics_url, "nv_inference_request_success", model=MODEL)
    for _ in range(3):
        client.generate("The capital of France is", max_tokens=4)
    with pytest.raises(InvalidArgumentError):
        client.generate("hi", max_tokens=-1)
    assert scrape(url, "autoglm_requests_total", **labels) == before + 3
    assert (
        scrape(url, "autoglm_requests_total", model=MODEL, rpc="Generate", code="INVALID_ARGUMENT")
        == bad_before + 1
    )
    ttft_count = scrape(url, "autoglm_time_to_first_token_seconds_count", model=MODEL)
    ttft_sum = scrape(url, "autoglm_time_to_first_token_seconds_sum", model=MODEL)
    e2e_sum = scrape(url, "autoglm_request_duration_seconds_sum", model=MODEL)
    assert ttft_count >= 3
    assert 0 < ttft_sum < e2e_sum
    assert scrape(url, "autoglm_completion_tokens_count", model=MODEL) >= 3
    assert scrape(url, "autoglm_engine_up") == 1
    # Triton's own endpoint sits alongside and saw the same requests.
    triton_after = scrape(triton.metrics_url, "nv_inference_request_success", model=MODEL)
    assert triton_after >= triton_before + 3


def test_audit_chain_records_requests_without_secrets(
    client: Client, facade: Facade, token: str
) -> None:
    client.generate("The capital of France is", max_tokens=2, request_id="audited-1")
    audit_dir = facade.settings.audit_dir
    assert audit_dir is not None
    facade.thread.running.generations.audit.flush(timeout=10)
    result = verify_dir(audit_dir)
    assert result.ok, result.problem
    text = (audit_dir / "audit.jsonl").read_text()
    assert '"request_id":"audited-1"' in text
    assert token.split("_")[-1] not in text  # never the secret
    assert "capital" not in text  # no prompt text unless configured


def test_refused_call_records_the_auth_decision(
    client_config: ClientConfig, otlp: OtlpReceiver
) -> None:
    otlp.clear()
    with (
        Client(dataclasses.replace(client_config, token=None)) as anonymous,
        pytest.raises(AuthenticationError),
    ):
        anonymous.generate("hi", max_tokens=1)

    def refused(ss: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in ss
            if s.name == "/autoglm.v1.TextGeneration/Generate"
            and s.attributes.get("autoglm.auth.result") == "UNAUTHENTICATED"
        ]

    (server,) = refused(otlp.wait_for(lambda ss: bool(refused(ss)), timeout=10))
    assert server.attributes["rpc.grpc.status_code"] == 16  # UNAUTHENTICATED
    assert "enduser.id" not in server.attributes  # nobody was authenticated
    # Refused before the servicer: nothing below the server span.
    assert not [s for s in otlp.spans if s.parent_span_id == server.span_id]
