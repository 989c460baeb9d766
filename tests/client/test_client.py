"""Client behaviour that needs no server: default-model choice, eager argument checks,
per-call metadata and deadline, and stream cancellation. The generated stub is swapped for a
recording stand-in; the real wire is covered by the integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from autoglm.client import (
    AsyncClient,
    AutoGLMError,
    Client,
    ClientConfig,
    ConfigError,
    InvalidArgumentError,
)
from autoglm.v1 import text_generation_pb2 as pb
from tests.client.conftest import TOKEN

RESPONSE = pb.GenerateResponse(
    request_id="r", text="ok", finish_reason=pb.FINISH_REASON_STOP, model="m"
)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRAILERS = (("x-trace-id", TRACE_ID),)


class StreamCall:
    """Stands in for the object a server-streaming call returns (iterator + cancel)."""

    def __init__(self, responses: list[pb.GenerateResponse]) -> None:
        self._responses = iter(responses)
        self.cancelled = False

    def __iter__(self) -> Iterator[pb.GenerateResponse]:
        return self

    def __next__(self) -> pb.GenerateResponse:
        return next(self._responses)

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return TRAILERS


class Future:
    def __init__(self, response: Any) -> None:
        self._response = response

    def result(self) -> Any:
        return self._response

    def cancel(self) -> bool:
        return False

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return TRAILERS


class Method:
    def __init__(self, stub: StubStandIn, name: str, response: Any) -> None:
        self._stub, self._name, self._response = stub, name, response

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self._stub.calls.append((self._name, request, kwargs))
        return self._response

    def future(self, request: Any, **kwargs: Any) -> Future:
        return Future(self(request, **kwargs))


class StubStandIn:
    def __init__(self, models: list[str]) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        listed = pb.ListModelsResponse(models=[pb.ModelInfo(name=n) for n in models])
        self.stream = StreamCall([RESPONSE, RESPONSE, RESPONSE])
        self.ListModels = Method(self, "ListModels", listed)
        self.Generate = Method(self, "Generate", RESPONSE)
        self.GenerateStream = Method(self, "GenerateStream", self.stream)
        self.CountTokens = Method(self, "CountTokens", pb.CountTokensResponse(prompt_tokens=2))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


def _client(models: list[str], **config: Any) -> tuple[Client, StubStandIn]:
    values: dict[str, Any] = {
        "ca_cert": None,
        "client_cert": None,
        "client_key": None,
        "token": TOKEN,
        "insecure": True,
    }
    values.update(config)
    client = Client(ClientConfig("127.0.0.1:1", **values))
    stub = StubStandIn(models)
    client._stub = stub  # type: ignore[assignment]
    return client, stub


def test_explicit_model_wins() -> None:
    client, stub = _client(["a", "b"], model="configured")
    with client:
        client.generate("Hi", model="explicit")
    assert stub.names() == ["Generate"]
    assert stub.calls[0][1].model == "explicit"


def test_configured_model() -> None:
    client, stub = _client(["a", "b"], model="configured")
    with client:
        client.count_tokens("Hi")
    assert stub.calls[0][1].model == "configured"


def test_only_served_model_is_discovered_once() -> None:
    client, stub = _client(["only"])
    with client:
        client.generate("Hi")
        client.count_tokens("Hi")
    assert stub.names() == ["ListModels", "Generate", "CountTokens"]
    assert stub.calls[1][1].model == stub.calls[2][1].model == "only"


def test_several_models_and_none_chosen() -> None:
    client, stub = _client(["a", "b"])
    with client, pytest.raises(ConfigError, match=r"\(a, b\)"):
        client.generate("Hi")
    assert stub.names() == ["ListModels"]


def test_bad_arguments_fail_before_any_rpc() -> None:
    client, stub = _client(["only"])
    with client, pytest.raises(InvalidArgumentError, match="not both"):
        client.generate_stream("Hi", messages=[("user", "Hi")])
    assert stub.calls == []


def test_insecure_metadata_and_deadline() -> None:
    client, stub = _client(["only"], timeout=30.0)
    with client:
        client.generate("Hi", model="m")
        client.generate("Hi", model="m", timeout=2.0)
    # W3C trace headers appear once any test in this process installed an OTel SDK provider
    # (server/telemetry/tracing.py sets the global one): they are the tracing tests' business.
    first = stub.calls[0][2]
    assert first["timeout"] == 30.0
    assert [kv for kv in first["metadata"] if kv[0] not in ("traceparent", "tracestate")] == [
        ("authorization", f"Bearer {TOKEN}")
    ]
    assert stub.calls[1][2]["timeout"] == 2.0


def test_breaking_out_of_a_stream_cancels_the_rpc() -> None:
    client, stub = _client(["only"])
    with client:
        for delta in client.generate_stream("Hi", model="m"):
            assert delta.text == "ok"
            break
    assert stub.stream.cancelled


def test_closing_a_stream_cancels_the_rpc() -> None:
    client, stub = _client(["only"])
    with client, contextlib.closing(client.generate_stream("Hi", model="m")) as stream:
        next(stream)
    assert stub.stream.cancelled


def test_stream_errors_are_mapped() -> None:
    class Failing(StreamCall):
        def __next__(self) -> pb.GenerateResponse:
            raise grpc.RpcError("boom")

    client, stub = _client(["only"])
    stub.GenerateStream = Method(stub, "GenerateStream", Failing([]))
    with client, pytest.raises(AutoGLMError) as info:
        list(client.generate_stream("Hi", model="m"))
    assert isinstance(info.value.__cause__, grpc.RpcError)
    assert stub.calls[-1][0] == "GenerateStream"


async def test_async_client_chooses_the_only_model() -> None:
    class AsyncMethod(Method):
        async def __call__(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return super().__call__(request, **kwargs)

    config = ClientConfig("127.0.0.1:1", None, None, None, TOKEN, insecure=True)
    async with AsyncClient(config) as client:
        stub = StubStandIn(["only"])
        stub.ListModels = AsyncMethod(stub, "ListModels", stub.ListModels._response)
        stub.CountTokens = AsyncMethod(stub, "CountTokens", stub.CountTokens._response)
        client._stub = stub  # type: ignore[assignment]
        assert (await client.count_tokens("Hi")).prompt_tokens == 2
        await client.count_tokens("Hi")
    assert stub.names() == ["ListModels", "CountTokens", "CountTokens"]
    assert stub.calls[1][1].model == "only"
