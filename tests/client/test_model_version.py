"""Which model version answered: the `x-autoglm-model-version` trailer (server/api/service.py)
as `Completion.model_version` and the last `Delta.model_version`, sync and async, unary and
stream. Without a server: the stand-ins of test_client.py / test_tracing.py with scripted
trailers; the real trailer through the real façade is tests/integration/test_canary.py's."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from autoglm.client import AsyncClient, ClientConfig
from autoglm.client._trailers import MODEL_VERSION_KEY, model_version_from
from tests.client.conftest import TOKEN
from tests.client.test_client import TRACE_ID, TRAILERS, Future, Method, StreamCall, _client
from tests.client.test_tracing import FULL, TOKENS, AioMethod, AioStreamCall, AioUnaryCall

Trailers = tuple[tuple[str, Any], ...]

# The three cases every call shape is checked with: (trailers, expected model_version).
CASES = [
    pytest.param((*TRAILERS, (MODEL_VERSION_KEY, "3")), 3, id="present"),
    pytest.param(TRAILERS, None, id="absent"),
    pytest.param((*TRAILERS, (MODEL_VERSION_KEY, "v3")), None, id="malformed"),
]


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1),
        ("42", 42),
        ("007", 7),
        ("", None),
        ("v3", None),
        ("3.0", None),
        ("-1", None),
        ("0", None),  # Triton model versions start at 1
        (" 3", None),  # int() would strip the space
        ("+3", None),
        ("1_0", None),  # int() would take the underscore
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: isdigit() and int() take it
        (b"3", None),  # a binary (-bin) value: never what the server sends for this key
        ("9" * (sys.get_int_max_str_digits() + 1), None),  # int() raises ValueError
    ],
)
def test_model_version_from_a_trailer_value(value: Any, expected: int | None) -> None:
    assert model_version_from(((MODEL_VERSION_KEY, value),)) == expected


def test_model_version_from_absent_or_other_trailers() -> None:
    assert model_version_from(None) is None
    assert model_version_from(()) is None
    assert model_version_from(TRAILERS) is None
    assert model_version_from((("x-autoglm-model-version-bin", "3"),)) is None
    assert model_version_from(((MODEL_VERSION_KEY, "2"), ("x-trace-id", TRACE_ID))) == 2


# --- sync client ------------------------------------------------------------------------------


class TrailersFuture(Future):
    def __init__(self, response: Any, trailers: Trailers) -> None:
        super().__init__(response)
        self._trailers = trailers

    def trailing_metadata(self) -> Trailers:
        return self._trailers


class UnaryMethod(Method):
    """Generate's stand-in, its future ending with `trailers`."""

    def __init__(self, stub: Any, trailers: Trailers) -> None:
        super().__init__(stub, "Generate", FULL)
        self._trailers = trailers

    def future(self, request: Any, **kwargs: Any) -> Future:
        return TrailersFuture(self(request, **kwargs), self._trailers)


class TrailersStream(StreamCall):
    def __init__(self, trailers: Trailers) -> None:
        super().__init__(TOKENS)
        self._trailers = trailers

    def trailing_metadata(self) -> Trailers:
        return self._trailers


@pytest.mark.parametrize(("trailers", "expected"), CASES)
def test_sync_generate(trailers: Trailers, expected: int | None) -> None:
    client, stub = _client(["only"])
    stub.Generate = UnaryMethod(stub, trailers)
    with client:
        completion = client.generate("Hi")
    assert completion.model_version == expected
    assert completion.trace_id == TRACE_ID  # the other trailer is read as before
    assert (completion.text, completion.completion_tokens) == ("Paris.", 3)


@pytest.mark.parametrize(("trailers", "expected"), CASES)
def test_sync_stream_sets_it_on_the_last_delta(trailers: Trailers, expected: int | None) -> None:
    client, stub = _client(["only"])
    stub.GenerateStream = Method(stub, "GenerateStream", TrailersStream(trailers))
    with client:
        deltas = list(client.generate_stream("Hi"))
    assert [d.model_version for d in deltas] == [None, None, expected]
    assert [d.trace_id for d in deltas] == ["", "", TRACE_ID]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens == 3


# --- asyncio ----------------------------------------------------------------------------------


class AioTrailersUnary(AioUnaryCall):
    def __init__(self, response: Any, trailers: Trailers) -> None:
        super().__init__(response)
        self._trailers = trailers

    async def trailing_metadata(self) -> Trailers:
        return self._trailers


class AioTrailersStream(AioStreamCall):
    def __init__(self, trailers: Trailers) -> None:
        super().__init__(TOKENS)
        self._trailers = trailers

    async def trailing_metadata(self) -> Trailers:
        return self._trailers


@pytest.mark.parametrize(("trailers", "expected"), CASES)
async def test_async_generate_and_stream(trailers: Trailers, expected: int | None) -> None:
    config = ClientConfig("127.0.0.1:1", None, None, None, TOKEN, insecure=True, model="m")
    async with AsyncClient(config) as client:
        _, stub = _client(["only"])
        stub.Generate = AioMethod(stub, "Generate", lambda: AioTrailersUnary(FULL, trailers))
        stub.GenerateStream = AioMethod(stub, "GenerateStream", lambda: AioTrailersStream(trailers))
        client._stub = stub  # type: ignore[assignment]
        completion = await client.generate("Hi")
        deltas = [d async for d in client.generate_stream("Hi")]
    assert completion.model_version == expected and completion.trace_id == TRACE_ID
    assert [d.model_version for d in deltas] == [None, None, expected]
    assert deltas[-1].trace_id == TRACE_ID
