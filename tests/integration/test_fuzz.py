"""Hostile input, property-based: random and malformed requests never get INTERNAL.

Thousands of requests go to the real façade (real TLS, tokens, Triton and model). Only the
caller-error codes may come back, and the server stays healthy. `max_tokens` is drawn from
values that keep any accepted generation to a token or two (0 would mean the 256-token default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoglm.server.devstack.pki import DevPki
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

from .conftest import MODEL, Facade, secure_channel

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FuzzChannel = tuple[grpc.Channel, tuple[tuple[str, str], ...]]

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(min_value=0.0, max_value=2.0, width=32),
)
text = st.text(max_size=40)


@st.composite
def sampling(draw: st.DrawFn) -> pb.SamplingParams:
    s = pb.SamplingParams(
        max_tokens=draw(
            st.one_of(st.integers(1, 2), st.integers(-(2**31), -1), st.integers(2**20, 2**31 - 1))
        )
    )
    if draw(st.booleans()):
        s.temperature = draw(floats)
    if draw(st.booleans()):
        s.top_p = draw(floats)
    if draw(st.booleans()):
        s.top_k = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        s.seed = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        s.repetition_penalty = draw(floats)
    s.stop.extend(draw(st.lists(st.text(max_size=150), max_size=10)))
    return s


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        model=draw(st.sampled_from([MODEL, MODEL, "", "no-such-model"]) | text),
        request_id=draw(st.one_of(st.just(""), text)),
        sampling=draw(sampling()),
    )
    if draw(st.booleans()):
        req.prompt = draw(text)
    if draw(st.booleans()):
        for _ in range(draw(st.integers(0, 3))):
            req.messages.add(
                role=draw(st.sampled_from(["user", "system", "assistant"]) | text),
                content=draw(text),
            )
    return req


@pytest.fixture(scope="module")
def fuzz_channel(facade: Facade, pki: DevPki, token_store: TokenStore) -> Iterator[FuzzChannel]:
    # Its own principal: the fuzzer's rate-limit rejections must not throttle other tests.
    token, _ = token_store.create("fuzzer", ["generate", "models:read"])
    with secure_channel(facade.endpoint, pki) as channel:
        yield channel, (("authorization", f"Bearer {token}"),)


def _code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck))
@given(req=generate_requests(), streaming=st.booleans())
def test_random_requests_never_fail_internally(
    fuzz_channel: FuzzChannel, req: pb.GenerateRequest, streaming: bool
) -> None:
    channel, md = fuzz_channel
    stub = pb_grpc.TextGenerationStub(channel)
    if streaming:
        code = _code_of(lambda: list(stub.GenerateStream(req, metadata=md, timeout=30)))
    else:
        code = _code_of(lambda: stub.Generate(req, metadata=md, timeout=30))
    assert code in ALLOWED, (code, req)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    payload=st.binary(max_size=200),
    method=st.sampled_from(["Generate", "GenerateStream", "CountTokens", "ListModels"]),
)
def test_random_bytes_never_fail_internally(
    fuzz_channel: FuzzChannel, payload: bytes, method: str
) -> None:
    channel, md = fuzz_channel
    path = f"/autoglm.v1.TextGeneration/{method}"
    if method == "GenerateStream":
        code = _code_of(lambda: list(channel.unary_stream(path)(payload, metadata=md, timeout=30)))
    else:
        code = _code_of(lambda: channel.unary_unary(path)(payload, metadata=md, timeout=30))
    assert code in ALLOWED, (code, payload)


def test_server_is_healthy_after_the_fuzzing(
    facade: Facade, pki: DevPki, fuzz_channel: FuzzChannel
) -> None:
    with secure_channel(facade.endpoint, pki) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
