"""End to end: client → façade (mTLS + token) → real Triton → CPU engine with the real model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from autoglm.client import (
    AsyncClient,
    Client,
    ClientConfig,
    Completion,
    DeadlineExceededError,
    Delta,
    InvalidArgumentError,
    NotFoundError,
)
from autoglm.server.devstack.triton_process import TritonProcess

from .conftest import LONG_PROMPT, MODEL, VLM, engine_metric

pytestmark = pytest.mark.integration


def collect(deltas: list[Delta]) -> tuple[str, list[int], Delta]:
    text = "".join(d.text for d in deltas)
    ids = [t for d in deltas for t in d.token_ids]
    return text, ids, deltas[-1]


def assert_same(stream: list[Delta], unary: Completion) -> None:
    text, ids, last = collect(stream)
    assert text.encode() == unary.text.encode()
    assert ids == list(unary.token_ids)
    assert last.finish_reason == unary.finish_reason
    assert (last.prompt_tokens, last.completion_tokens) == (
        unary.prompt_tokens,
        unary.completion_tokens,
    )
    # Only the last message carries the finish reason.
    assert all(d.finish_reason is None for d in stream[:-1])


def test_greedy_answer_is_real(client: Client) -> None:
    out = client.generate("The capital of France is", max_tokens=8, temperature=0.0)
    assert "Paris" in out.text
    assert out.model == MODEL
    assert out.completion_tokens == len(out.token_ids) > 0
    assert out.prompt_tokens == client.count_tokens("The capital of France is").prompt_tokens


def test_stream_equals_unary_for_same_seed(client: Client) -> None:
    kwargs = dict(max_tokens=24, temperature=0.9, top_p=0.95, seed=1234)
    unary = client.generate("Once upon a time", **kwargs)
    stream = list(client.generate_stream("Once upon a time", **kwargs))
    assert len(stream) > 1  # really streamed
    assert_same(stream, unary)


@pytest.mark.parametrize(
    "content",
    ["请用中文介绍一下长城，写三句话。", "Reply only with emojis: 🎉🔥👩‍👩‍👧‍👦 🇫🇷 👍🏽"],
    ids=["chinese", "emoji"],
)
def test_multibyte_stream_is_byte_identical(client: Client, content: str) -> None:
    kwargs = dict(messages=[{"role": "user", "content": content}], max_tokens=40, seed=7)
    unary = client.generate(**kwargs)
    stream = list(client.generate_stream(**kwargs))
    assert_same(stream, unary)
    assert max(len(d.text.encode()) - len(d.text) for d in stream) > 0  # multi-byte went through
    # No piece ends inside a character: every piece is valid text on its own.
    if "\ufffd" not in unary.text:
        assert all("\ufffd" not in d.text for d in stream)


def test_stop_string_cuts_text_and_finishes_with_stop(client: Client) -> None:
    base = client.generate("The capital of France is", max_tokens=16, temperature=0.0)
    assert "." in base.text, base.text
    expected = base.text[: base.text.index(".")]
    for stop_out in (
        client.generate("The capital of France is", max_tokens=16, temperature=0.0, stop=["."]),
    ):
        assert stop_out.text == expected
        assert stop_out.finish_reason == "stop"
    stream = list(
        client.generate_stream(
            "The capital of France is", max_tokens=16, temperature=0.0, stop=["."]
        )
    )
    text, _, last = collect(stream)
    assert text == expected
    assert last.finish_reason == "stop"
    assert last.completion_tokens < base.completion_tokens


def test_max_tokens_finishes_with_length(client: Client) -> None:
    out = client.generate("Count from one to one hundred:", max_tokens=5, temperature=0.0)
    assert out.finish_reason == "length"
    assert out.completion_tokens == 5 == len(out.token_ids)


def test_end_of_sequence_finishes_with_stop(client: Client) -> None:
    out = client.generate(
        messages=[{"role": "user", "content": "Say hello."}], max_tokens=200, temperature=0.0
    )
    assert out.finish_reason == "stop"
    assert out.completion_tokens < 200
    assert "<|im_end|>" not in out.text


def test_concurrent_streams_match_sequential(client: Client, client_config: ClientConfig) -> None:
    prompts = [f"Write a sentence about the number {n}." for n in range(4)]
    sequential = [client.generate(p, max_tokens=12, seed=n) for n, p in enumerate(prompts)]

    async def run_all() -> list[list[Delta]]:
        async with AsyncClient(client_config) as ac:

            async def one(n: int, p: str) -> list[Delta]:
                return [d async for d in ac.generate_stream(p, max_tokens=12, seed=n)]

            return await asyncio.gather(*(one(n, p) for n, p in enumerate(prompts)))

    concurrent = asyncio.run(run_all())
    for stream, unary in zip(concurrent, sequential, strict=True):
        assert_same(stream, unary)


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_cancelled_stream_is_cancelled_in_engine(client: Client, triton: TritonProcess) -> None:
    metric = "autoglm_engine_requests_total"
    before = engine_metric(triton, metric, outcome="cancelled")
    tokens_before = engine_metric(triton, "autoglm_engine_generated_tokens_total")
    stream = client.generate_stream(LONG_PROMPT, max_tokens=500, seed=1)
    received = 0
    for delta in stream:
        received += len(delta.token_ids)
        if received >= 3:
            break
    assert received >= 3
    stream.close()  # the caller goes away mid-stream
    assert _wait_for(lambda: engine_metric(triton, metric, outcome="cancelled") >= before + 1)
    generated = engine_metric(triton, "autoglm_engine_generated_tokens_total") - tokens_before
    assert generated < 500  # generation really stopped early


def test_deadline_cancels_engine_request(client: Client, triton: TritonProcess) -> None:
    metric = "autoglm_engine_requests_total"
    before = engine_metric(triton, metric, outcome="cancelled")
    with pytest.raises(DeadlineExceededError):
        client.generate(LONG_PROMPT, max_tokens=500, seed=1, timeout=1.0)
    assert _wait_for(lambda: engine_metric(triton, metric, outcome="cancelled") >= before + 1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(prompt=""), "prompt"),
        (dict(prompt="hi", max_tokens=-1), "sampling.max_tokens"),
        (dict(prompt="hi", top_p=1.5), "sampling.top_p"),
        (dict(prompt="hi", temperature=-0.1), "sampling.temperature"),
        (dict(prompt="hi", top_k=5000), "sampling.top_k"),
        (dict(prompt="hi", stop=[""]), "sampling.stop[0]"),
        (dict(prompt="hi", max_tokens=100_000), "sampling.max_tokens"),
        (dict(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(
    client: Client, kwargs: dict, field: str
) -> None:
    prompt = kwargs.pop("prompt", None)
    for call in (client.generate, lambda *a, **k: list(client.generate_stream(*a, **k))):
        with pytest.raises(InvalidArgumentError) as err:
            call(prompt, **kwargs)
        assert field in [f for f, _ in err.value.field_violations], err.value
        assert field in str(err.value)


def test_client_calls_start_no_thread_each(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # The token goes as call metadata on the mTLS channel: as composed call credentials, gRPC
    # Python would run its plugin on a new thread for every call (client/_channel.py).
    client.list_models()  # connected
    started: list[str] = []
    start = threading.Thread.start

    def counting(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counting)
    for _ in range(5):
        assert client.list_models()
    assert len(started) < 5, started


def test_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError, match="no-such-model"):
        client.generate("hi", model="no-such-model")
    with pytest.raises(NotFoundError):
        list(client.generate_stream("hi", model="no-such-model"))
    with pytest.raises(NotFoundError):
        client.count_tokens("hi", model="no-such-model")


def test_list_models_and_count_tokens(client: Client) -> None:
    models = client.list_models()
    assert sorted(m.name for m in models) == sorted([MODEL, VLM])
    info = models[0]
    assert info.engine == "cpu_reference" and info.has_chat_template
    assert 0 < info.default_max_tokens <= info.max_output_tokens < info.max_context_tokens
    assert info.max_prompt_tokens == info.max_context_tokens  # no engine input limit here
    count = client.count_tokens(messages=[{"role": "user", "content": "Hello"}])
    out = client.generate(messages=[{"role": "user", "content": "Hello"}], max_tokens=2)
    assert count.prompt_tokens == out.prompt_tokens == len(count.token_ids)


async def test_async_client_streams(aclient: AsyncClient) -> None:
    deltas = [d async for d in aclient.generate_stream("The capital of France is", max_tokens=6)]
    assert deltas[-1].finish_reason in ("stop", "length")
    whole = await aclient.generate("The capital of France is", max_tokens=6, seed=5)
    again = await aclient.generate("The capital of France is", max_tokens=6, seed=5)
    assert whole.text == again.text
