"""serving.serve's streams, around a stand-in for the generation call (the real one, with the
real engine: tests/integration/test_openai_*.py). What is hard to provoke end to end: an engine
failure in the middle of a stream, and a client that goes away mid-stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from autoglm.server.api.openai import serving, streaming
from autoglm.server.errors import EngineUnavailable
from autoglm.server.generation.pipeline import Delta
from autoglm.server.models import ModelRegistry
from autoglm.server.telemetry.tracing import http_server_span
from autoglm.v1 import text_generation_pb2 as pb

BODY = json.dumps(
    {"model": "m", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}
).encode()


class StandInGenerations:
    """Yields `texts` as deltas, then fails with `fail` or finishes; records how it ended."""

    registry = ModelRegistry([])  # serving resolves adapter names against it: none here

    def __init__(self, texts: list[str], fail: Exception | None = None, hang: bool = False):
        self.texts, self.fail, self.hang = texts, fail, hang
        self.ended: str | None = None

    async def generate(self, call: Any, check: Callable[[], Any], **_: Any) -> AsyncIterator[Delta]:
        check()
        try:
            for text in self.texts:
                yield Delta(text, [1])
            if self.hang:
                await asyncio.Event().wait()
            if self.fail is not None:
                raise self.fail
            yield Delta("", [], pb.FINISH_REASON_STOP, 3, len(self.texts))
            self.ended = "finished"
        except (asyncio.CancelledError, GeneratorExit):
            self.ended = "cancelled"
            raise


async def run(gens: StandInGenerations, *, disconnect_after: int | None = None) -> list[bytes]:
    sent: list[bytes] = []
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message["body"])
            if disconnect_after is not None and len(sent) >= disconnect_after:
                gone.set()

    async def disconnected() -> None:
        await receive()

    response = await serving.serve(
        serving.COMPLETIONS,
        gens,  # type: ignore[arg-type]
        BODY,
        principal=None,
        request_id="r1",
        span=http_server_span("POST", "/v1/completions", {}),
        disconnected=disconnected,
    )
    assert isinstance(response, streaming.EventStream)
    await response({}, receive, send)
    return sent


async def test_a_finished_stream_ends_with_usage_and_done() -> None:
    gens = StandInGenerations(["Hel", "lo"])
    sent = await run(gens)
    events = [json.loads(b[6:]) for b in sent if b.startswith(b"data: {")]
    assert [e["choices"][0]["text"] for e in events[:2]] == ["Hel", "lo"]
    assert events[2]["choices"][0]["finish_reason"] == "stop"
    assert events[3]["choices"] == [] and events[3]["usage"]["completion_tokens"] == 2
    assert sent[-2:] == [b"data: [DONE]\n\n", b""]
    assert gens.ended == "finished"


async def test_a_failure_mid_stream_is_one_error_event_then_the_end() -> None:
    gens = StandInGenerations(["Hel"], fail=EngineUnavailable("triton went away"))
    sent = await run(gens)
    first, error, end = sent
    assert json.loads(first[6:])["choices"][0]["text"] == "Hel"
    body = json.loads(error[6:])
    assert body["error"]["type"] == "service_unavailable"
    assert body["error"]["message"] == "triton went away"
    assert end == b""  # the stream closes, without [DONE]


async def test_a_client_going_away_cancels_the_generation() -> None:
    gens = StandInGenerations(["Hel"], hang=True)
    # The first event goes out, then the client disconnects while the engine is silent.
    sent = await asyncio.wait_for(run(gens, disconnect_after=1), timeout=10)
    assert len(sent) == 1
    assert gens.ended == "cancelled"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the guard's cancel was taken back
