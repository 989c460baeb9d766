"""Retries: the pure policy and decisions (`_retry.py`, with a fake clock and random source, no
sleeping), their settings, and how both clients apply them, with a scripted stand-in for the
generated stub. The real wire (a façade that starts late, an engine killed mid-stream) is
covered by tests/integration/test_client_retries.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from autoglm.client import (
    AsyncClient,
    AutoGLMError,
    Client,
    ClientConfig,
    ConfigError,
    InternalError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
    _tracing,
    cli,
)
from autoglm.client._channel import channel_options
from autoglm.client._retry import Attempts, backoff_cap, is_retryable
from autoglm.v1 import text_generation_pb2 as pb
from tests.client.conftest import TOKEN
from tests.client.test_exceptions import FakeRpcError, rich_error

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _error(code: grpc.StatusCode, retry_after: float | None = None) -> AutoGLMError:
    return AutoGLMError("x", code=code, retry_after=retry_after)


# --- RetryPolicy ---------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (3, 0.2, 5.0)
    assert policy.multiplier == 2.0
    assert ClientConfig("127.0.0.1:1", None, None, None, None).retry == policy


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_attempts": 0}, r"retry\.max_attempts must be at least 1"),
        ({"max_attempts": 2.0}, r"retry\.max_attempts must be an integer"),
        ({"max_attempts": True}, r"retry\.max_attempts must be an integer"),
        ({"initial_backoff": 0}, r"retry\.initial_backoff must be a positive finite"),
        ({"max_backoff": float("inf")}, r"retry\.max_backoff must be a positive finite"),
        ({"multiplier": float("nan")}, r"retry\.multiplier must be a positive finite"),
        ({"initial_backoff": "1"}, r"retry\.initial_backoff must be a number"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, r"retry\.max_backoff \(1\) must be at"),
        ({"multiplier": 0.5}, r"retry\.multiplier must be at least 1"),
        ({"retry_resource_exhausted": 1}, r"retry\.retry_resource_exhausted must be true or"),
    ],
)
def test_policy_validation_names_the_field(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RetryPolicy(**values)


def test_backoff_cap_grows_then_stays_at_max() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.5, max_backoff=3.0, multiplier=2.0)
    assert [backoff_cap(policy, n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_cap(policy, 10**6) == 3.0  # no overflow


OPT_IN = RetryPolicy(retry_resource_exhausted=True)


@pytest.mark.parametrize(
    ("code", "retry_after", "policy", "retryable"),
    [
        (UNAVAILABLE, None, RetryPolicy(), True),
        (UNAVAILABLE, 1.0, RetryPolicy(), True),
        (UNAVAILABLE, 60.0, RetryPolicy(), False),  # the server asks for longer than max_backoff
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 1.0, RetryPolicy(), False),  # not asked for
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 1.0, OPT_IN, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, OPT_IN, False),  # e.g. too long: permanent
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 30.0, OPT_IN, False),
        (grpc.StatusCode.INTERNAL, None, OPT_IN, False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, OPT_IN, False),
        (grpc.StatusCode.CANCELLED, None, OPT_IN, False),
        (grpc.StatusCode.UNKNOWN, None, OPT_IN, False),
        (None, None, OPT_IN, False),
    ],
)
def test_which_errors_are_retried(
    code: grpc.StatusCode | None, retry_after: float | None, policy: RetryPolicy, retryable: bool
) -> None:
    assert is_retryable(_error(code, retry_after), policy) is retryable  # type: ignore[arg-type]


# --- Attempts --------------------------------------------------------------------------------


def test_full_jitter_delays_until_attempts_run_out() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff=1.0, max_backoff=10.0, multiplier=3.0)
    draws = iter([0.5, 0.25, 1.0])
    attempts = Attempts(policy, None, clock=FakeClock(), random=lambda: next(draws))
    error = _error(UNAVAILABLE)
    assert attempts.attempt_timeout() is None
    assert attempts.next_delay(error) == 0.5  # 0.5 * 1
    assert attempts.next_delay(error) == 0.75  # 0.25 * 3
    assert attempts.next_delay(error) == 9.0  # 1.0 * 9
    assert attempts.number == 4
    assert attempts.next_delay(error) is None
    assert error.attempts == 4


def test_one_attempt_means_no_retry() -> None:
    attempts = Attempts(RetryPolicy(max_attempts=1), 10.0, clock=FakeClock(), random=lambda: 0.0)
    error = _error(UNAVAILABLE)
    assert attempts.next_delay(error) is None
    assert error.attempts == 1


def test_nothing_is_retried_once_a_message_was_received() -> None:
    attempts = Attempts(RetryPolicy(), None, clock=FakeClock(), random=lambda: 0.0)
    assert attempts.next_delay(_error(UNAVAILABLE), received=True) is None


def test_permanent_errors_are_not_retried() -> None:
    attempts = Attempts(RetryPolicy(), None, clock=FakeClock(), random=lambda: 0.0)
    error = _error(grpc.StatusCode.INTERNAL)
    assert attempts.next_delay(error) is None
    assert (attempts.number, error.attempts) == (1, 1)


def test_each_attempt_gets_what_is_left_of_the_timeout() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(max_attempts=5), 10.0, clock=clock, random=lambda: 0.5)
    assert attempts.attempt_timeout() == 10.0  # the caller's value, as given
    clock.now += 3.0  # the first attempt failed after 3 s
    assert attempts.next_delay(_error(UNAVAILABLE)) == pytest.approx(0.1)
    clock.now += 0.1
    assert attempts.attempt_timeout() == pytest.approx(6.9)


def test_no_retry_whose_pause_ends_past_the_deadline() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(initial_backoff=2.0), 10.0, clock=clock, random=lambda: 1.0)
    clock.now += 8.5  # 1.5 s left, the pause would be 2 s
    error = _error(UNAVAILABLE)
    assert attempts.next_delay(error) is None
    assert error.attempts == 1


def test_retry_info_delay_is_a_minimum() -> None:
    attempts = Attempts(OPT_IN, None, clock=FakeClock(), random=lambda: 0.1)
    assert attempts.next_delay(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, 1.5)) == 1.5
    policy = RetryPolicy(initial_backoff=4.0, retry_resource_exhausted=True)
    attempts = Attempts(policy, None, clock=FakeClock(), random=lambda: 1)
    assert attempts.next_delay(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, 1.5)) == 4.0


def test_retry_info_longer_than_the_timeout_is_not_waited_for() -> None:
    attempts = Attempts(OPT_IN, 1.0, clock=FakeClock(), random=lambda: 0.0)
    assert attempts.next_delay(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, 1.5)) is None


# --- settings --------------------------------------------------------------------------------


def _profile(tmp_path: Path, retry: object) -> Path:
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"endpoint": "127.0.0.1:1", "retry": retry}), encoding="utf-8")
    return path


def test_profile_retry_object(tmp_path: Path) -> None:
    config = ClientConfig.load(_profile(tmp_path, {"max_attempts": 5, "max_backoff": 1}))
    assert config.retry == RetryPolicy(max_attempts=5, max_backoff=1.0)


@pytest.mark.parametrize(
    ("retry", "message"),
    [
        (3, r"'retry' must be a JSON object"),
        ({"max_attempt": 5}, r"unknown retry setting\(s\) max_attempt \(known: initial_backoff"),
        ({"max_attempts": -1}, r"client\.json: retry\.max_attempts must be at least 1"),
    ],
)
def test_profile_retry_errors(tmp_path: Path, retry: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientConfig.load(_profile(tmp_path, retry))


def test_config_rejects_a_retry_that_is_not_a_policy() -> None:
    with pytest.raises(ConfigError, match="retry must be a RetryPolicy, got dict"):
        ClientConfig("127.0.0.1:1", None, None, None, None, retry={"max_attempts": 2})  # type: ignore[arg-type]


def test_reconnect_backoff_follows_the_policy() -> None:
    policy = RetryPolicy(initial_backoff=0.25, max_backoff=2.0)
    config = ClientConfig("127.0.0.1:1", None, None, None, None, insecure=True, retry=policy)
    options = dict(channel_options(config))
    assert options["grpc.initial_reconnect_backoff_ms"] == 250
    assert options["grpc.max_reconnect_backoff_ms"] == 2000
    off = ClientConfig("127.0.0.1:1", None, None, None, None, retry=RetryPolicy(max_attempts=1))
    assert "grpc.initial_reconnect_backoff_ms" not in dict(channel_options(off))


def test_cli_max_attempts_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[ClientConfig] = []

    class Recording:
        def __init__(self, config: ClientConfig) -> None:
            seen.append(config)

        def __enter__(self) -> Recording:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def list_models(self) -> list[Any]:
            return []

    monkeypatch.setattr(cli, "Client", Recording)
    profile = _profile(tmp_path, {"max_attempts": 5, "initial_backoff": 0.5})
    assert cli.main(["models", "--config", str(profile), "--max-attempts", "1"]) == 0
    assert seen[0].retry == RetryPolicy(max_attempts=1, initial_backoff=0.5)  # the rest kept
    assert cli.main(["models", "--config", str(profile), "--max-attempts", "0"]) == 2


def test_cli_reports_the_attempts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Failing:
        def __init__(self, config: ClientConfig) -> None:
            pass

        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def list_models(self) -> list[Any]:
            raise UnavailableError("engine not ready", code=UNAVAILABLE, attempts=3)

    monkeypatch.setattr(cli, "Client", Failing)
    assert cli.main(["models", "--endpoint", "127.0.0.1:1", "--insecure"]) == 1
    assert capsys.readouterr().err == "error: UNAVAILABLE: engine not ready\n  after 3 attempts\n"


# --- the sync client -------------------------------------------------------------------------

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)
TOKENS = [
    pb.GenerateResponse(request_id="r", text="a", token_ids=[1]),
    pb.GenerateResponse(request_id="r", text="b", token_ids=[2]),
    pb.GenerateResponse(
        request_id="r", text="c", token_ids=[3], finish_reason=pb.FINISH_REASON_STOP
    ),
]
WHOLE = pb.GenerateResponse(request_id="r", text="abc", finish_reason=pb.FINISH_REASON_STOP)


def unavailable() -> FakeRpcError:
    return FakeRpcError(UNAVAILABLE, "engine not ready")


class ScriptedStream:
    """A server-streaming call that yields messages and raises the errors among them."""

    def __init__(self, items: list[Any]) -> None:
        self._items = list(items)
        self.cancelled = False

    def __iter__(self) -> Iterator[pb.GenerateResponse]:
        return self

    def __next__(self) -> pb.GenerateResponse:
        if not self._items:
            raise StopIteration
        item = self._items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class ScriptedFuture:
    def __init__(self, outcome: Any) -> None:
        self._outcome = outcome

    def result(self) -> Any:
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def cancel(self) -> bool:
        return False

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class ScriptedMethod:
    """One RPC of the stub: call n gets `outcomes[n]` (an error raised, or a response)."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        self.called = asyncio.Event()  # for async tests: set at the first call

    def _next(self, request: Any, kwargs: dict[str, Any]) -> Any:
        self.calls.append((request, kwargs))
        self.called.set()
        return self.outcomes.pop(0)

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        outcome = self._next(request, kwargs)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def future(self, request: Any, **kwargs: Any) -> ScriptedFuture:
        return ScriptedFuture(self._next(request, kwargs))


class ScriptedStub:
    def __init__(self, **methods: list[Any]) -> None:
        for name in ("Generate", "GenerateStream", "ListModels", "CountTokens"):
            setattr(self, name, ScriptedMethod(methods.get(name, [])))


def _config(policy: RetryPolicy = FAST, **values: Any) -> ClientConfig:
    return ClientConfig(
        "127.0.0.1:1", None, None, None, TOKEN, insecure=True, model="m", retry=policy, **values
    )


def _client(stub: ScriptedStub, policy: RetryPolicy = FAST, **values: Any) -> Client:
    client = Client(_config(policy, **values))
    client._stub = stub  # type: ignore[assignment]
    return client


def test_generate_is_retried_with_one_request_id_and_a_shrinking_timeout() -> None:
    stub = ScriptedStub(Generate=[unavailable(), unavailable(), WHOLE])
    with _client(stub, timeout=30.0) as client:
        assert client.generate("Hi").text == "abc"
    requests = [request for request, _ in stub.Generate.calls]  # type: ignore[attr-defined]
    timeouts = [kwargs["timeout"] for _, kwargs in stub.Generate.calls]  # type: ignore[attr-defined]
    assert len(requests) == 3
    assert len({r.request_id for r in requests}) == 1 and len(requests[0].request_id) == 16
    assert timeouts[0] == 30.0 and 29.0 < timeouts[2] <= timeouts[1] < 30.0


def test_the_callers_request_id_is_kept() -> None:
    stub = ScriptedStub(Generate=[unavailable(), WHOLE])
    with _client(stub) as client:
        client.generate("Hi", request_id="mine-1")
    assert [r.request_id for r, _ in stub.Generate.calls] == ["mine-1", "mine-1"]  # type: ignore[attr-defined]


def test_giving_up_raises_the_last_error_with_the_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stub = ScriptedStub(CountTokens=[unavailable(), unavailable(), unavailable()])
    with (
        _client(stub) as client,
        caplog.at_level(logging.DEBUG, "autoglm.client"),
        pytest.raises(UnavailableError) as info,
    ):
        client.count_tokens("Hi")
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, grpc.RpcError)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("CountTokens attempt 1 of 3 failed (UNAVAILABLE: engine not")
    assert messages[-1] == "CountTokens failed after 3 attempts (UNAVAILABLE)"


def test_one_span_per_call_with_an_event_per_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_tracing, "_tracer", provider.get_tracer("autoglm.client"))
    stub = ScriptedStub(Generate=[unavailable(), unavailable(), WHOLE])
    with _client(stub) as client:
        client.generate("Hi")
    (span,) = exporter.get_finished_spans()
    assert [e.name for e in span.events] == ["retry", "retry"]
    assert [e.attributes["autoglm.retry.attempt"] for e in span.events] == [1, 2]  # type: ignore[index]
    assert span.events[0].attributes["rpc.grpc.status_code"] == UNAVAILABLE.value[0]  # type: ignore[index]
    # Every attempt carried the span's trace context.
    assert len({kwargs["metadata"] for _, kwargs in stub.Generate.calls}) == 1  # type: ignore[attr-defined]
    provider.shutdown()


def test_permanent_errors_are_raised_at_once() -> None:
    stub = ScriptedStub(ListModels=[FakeRpcError(grpc.StatusCode.INTERNAL, "boom"), None])
    with _client(stub) as client, pytest.raises(InternalError):
        client.list_models()
    assert len(stub.ListModels.calls) == 1  # type: ignore[attr-defined]


def _busy() -> FakeRpcError:
    retry_info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=1_000_000))
    return rich_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy", retry_info)


def test_resource_exhausted_is_raised_by_default() -> None:
    stub = ScriptedStub(Generate=[_busy(), WHOLE])
    with _client(stub) as client, pytest.raises(ResourceExhaustedError) as info:
        client.generate("Hi")
    assert info.value.retry_after == 0.001 and len(stub.Generate.calls) == 1  # type: ignore[attr-defined]


def test_retry_info_is_honoured_when_asked_for() -> None:
    too_long = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "prompt too long")
    stub = ScriptedStub(Generate=[_busy(), WHOLE, too_long])
    opt_in = dataclasses.replace(FAST, retry_resource_exhausted=True)
    with _client(stub, opt_in) as client:
        assert client.generate("Hi").text == "abc"
        with pytest.raises(ResourceExhaustedError):
            client.generate("Hi")
    assert len(stub.Generate.calls) == 3  # type: ignore[attr-defined]


def test_disabled_retries_make_one_attempt() -> None:
    stub = ScriptedStub(Generate=[unavailable(), WHOLE])
    with _client(stub, RetryPolicy(max_attempts=1)) as client, pytest.raises(UnavailableError):
        client.generate("Hi")
    assert len(stub.Generate.calls) == 1  # type: ignore[attr-defined]


def test_stream_is_retried_until_its_first_message() -> None:
    failed = ScriptedStream([unavailable()])
    stub = ScriptedStub(GenerateStream=[failed, unavailable(), ScriptedStream(TOKENS)])
    with _client(stub) as client:
        assert "".join(d.text for d in client.generate_stream("Hi")) == "abc"
    calls = stub.GenerateStream.calls  # type: ignore[attr-defined]
    assert len(calls) == 3 and len({r.request_id for r, _ in calls}) == 1
    assert failed.cancelled


def test_stream_is_not_retried_after_a_message() -> None:
    broken = ScriptedStream([TOKENS[0], unavailable()])
    stub = ScriptedStub(GenerateStream=[broken, ScriptedStream(TOKENS)])
    received: list[str] = []
    with _client(stub) as client, pytest.raises(UnavailableError) as info:
        for delta in client.generate_stream("Hi"):
            received.append(delta.text)
    assert received == ["a"]  # nothing repeated, nothing from a second attempt
    assert len(stub.GenerateStream.calls) == 1  # type: ignore[attr-defined]
    assert info.value.attempts == 1


def test_stream_ending_with_its_only_message_held_back_is_not_retried() -> None:
    # The final message is held back for the trailers; an error after it was still received.
    broken = ScriptedStream([TOKENS[2], unavailable()])
    stub = ScriptedStub(GenerateStream=[broken, ScriptedStream(TOKENS)])
    with _client(stub) as client, pytest.raises(UnavailableError):
        list(client.generate_stream("Hi"))
    assert len(stub.GenerateStream.calls) == 1  # type: ignore[attr-defined]


# --- the async client ------------------------------------------------------------------------


class AioCall:
    """A grpc.aio call: awaitable (unary) and readable (streaming), scripted the same way."""

    def __init__(self, items: list[Any]) -> None:
        self._items = list(items)
        self.cancelled = False

    def __await__(self) -> Any:
        return self.read().__await__()

    async def read(self) -> Any:
        if not self._items:
            return grpc.aio.EOF
        item = self._items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


async def _aclient(stub: ScriptedStub, policy: RetryPolicy = FAST) -> AsyncClient:
    client = AsyncClient(_config(policy))
    client._stub = stub  # type: ignore[assignment]
    return client


async def test_async_generate_is_retried() -> None:
    stub = ScriptedStub(Generate=[AioCall([unavailable()]), AioCall([WHOLE])])
    client = await _aclient(stub)
    async with client:
        assert (await client.generate("Hi")).text == "abc"
    calls = stub.Generate.calls  # type: ignore[attr-defined]
    assert len(calls) == 2 and calls[0][0].request_id == calls[1][0].request_id != ""


async def test_async_stream_is_retried_only_before_its_first_message() -> None:
    stub = ScriptedStub(
        GenerateStream=[AioCall([unavailable()]), AioCall([TOKENS[0], unavailable()]), AioCall([])]
    )
    client = await _aclient(stub)
    received: list[str] = []
    async with client:
        with pytest.raises(UnavailableError):
            async for delta in client.generate_stream("Hi"):
                received.append(delta.text)
    assert received == ["a"]
    assert len(stub.GenerateStream.calls) == 2  # type: ignore[attr-defined]


async def test_async_cancelled_while_waiting_to_retry_makes_no_more_attempts() -> None:
    slow = RetryPolicy(max_attempts=5, initial_backoff=1000.0, max_backoff=1000.0)
    stub = ScriptedStub(CountTokens=[AioCall([unavailable()]) for _ in range(5)])
    client = await _aclient(stub, slow)
    async with client:
        task = asyncio.create_task(client.count_tokens("Hi"))
        await stub.CountTokens.called.wait()  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)  # the first attempt fails at once: now in the 1000 s pause
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(stub.CountTokens.calls) == 1  # type: ignore[attr-defined]
