"""Coalescing end to end: when writing to the caller is slower than the engine, the façade sends
fewer, larger messages — and their concatenation is still exactly the unary answer.

The slow write is simulated inside the façade (a pause after each message is handed to gRPC),
because a slow *reading* client does not slow the façade's writes until HTTP/2 flow control
fills its window (64 KiB, thousands of small messages).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from autoglm.client import Client

from .conftest import Facade
from .test_generate import assert_same, collect

pytestmark = pytest.mark.integration

LAG_S = 0.3  # several tokens of the CPU engine (~50 ms each on a quiet machine)


@pytest.fixture
def slow_writer(facade: Facade, monkeypatch: pytest.MonkeyPatch) -> None:
    service = facade.thread.running.service
    generate = service._generate

    async def slow(*args: Any) -> AsyncIterator[Any]:
        async with aclosing(generate(*args)) as deltas:
            async for item in deltas:
                yield item
                await asyncio.sleep(LAG_S)  # the previous message's write "takes" LAG_S

    monkeypatch.setattr(service, "_generate", slow)


def test_slow_writer_gets_coalesced_messages_equal_to_unary(
    client: Client, request: pytest.FixtureRequest
) -> None:
    kwargs: dict[str, Any] = dict(max_tokens=24, temperature=0.0)
    unary = client.generate("Once upon a time", **kwargs)
    request.getfixturevalue("slow_writer")
    stream = list(client.generate_stream("Once upon a time", **kwargs))
    assert_same(stream, unary)
    sizes = [len(d.token_ids) for d in stream if d.token_ids]
    assert max(sizes) > 1, sizes  # several tokens went out in one message
    assert len(sizes) < unary.completion_tokens


def test_slow_writer_with_stop_string_matches_unary(
    client: Client, request: pytest.FixtureRequest
) -> None:
    kwargs: dict[str, Any] = dict(max_tokens=16, temperature=0.0, stop=["."])
    unary = client.generate("The capital of France is", **kwargs)
    assert unary.finish_reason == "stop"
    request.getfixturevalue("slow_writer")
    stream = list(client.generate_stream("The capital of France is", **kwargs))
    assert_same(stream, unary)
    text, _, _ = collect(stream)
    assert "." not in text
