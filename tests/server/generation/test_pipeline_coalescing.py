"""pipeline.generate over the coalescing relay, with a scripted fake engine (no gRPC, no Triton)
and the real SmolLM2 tokenizer: however the engine's tokens are grouped into messages, the
concatenated text, the ids, the finish reason and the usage are those of one token at a time."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from autoglm.server.api.validation import validate_generate
from autoglm.server.engine.client import EngineRequest
from autoglm.server.generation import pipeline
from autoglm.server.generation.relay import Push
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.v1 import text_generation_pb2 as pb

# Multi-byte characters split over tokens, spaces, punctuation: what the detokenizer holds back.
TEXT = (
    "Once upon a time, naïve café owners sold crème brûlée — 東京 🙂👍 — and said: stop. The end."
)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> ServedModel:
    return load_model(ModelSpec(name="m", triton_model="m", tokenizer_dir=model_dir))


class ScriptedEngine:
    """Streams `ids` in groups of `group` per push; with `writer_lag` the writer falls behind."""

    def __init__(self, ids: list[int], group: int = 1) -> None:
        self.ids = ids
        self.group = group
        self.requests: list[EngineRequest] = []
        self.cancelled = False

    async def stream_into(
        self, request: EngineRequest, on_ids: Push, *, timeout: float | None = None
    ) -> None:
        self.requests.append(request)
        try:
            for i in range(0, len(self.ids), self.group):
                on_ids(self.ids[i : i + self.group])
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def run(
    model: ServedModel, engine: ScriptedEngine, *, stop: list[str], writer_lag: int
) -> list[pipeline.Delta]:
    plan = validate_generate(
        pb.GenerateRequest(
            model="m", prompt="hi", sampling=pb.SamplingParams(max_tokens=512, stop=stop)
        )
    )
    out = []
    prepared = pipeline.prepare(plan, model)
    gen = pipeline.generate(prepared, engine, timeout=None)  # type: ignore[arg-type]
    async for delta in gen:
        out.append(delta)
        for _ in range(writer_lag):  # a slow write: the engine keeps pushing meanwhile
            await asyncio.sleep(0)
    return out


def joined(deltas: list[pipeline.Delta]) -> tuple[str, list[int]]:
    return "".join(d.text for d in deltas), [i for d in deltas for i in d.token_ids]


@pytest.mark.parametrize("stop", [[], ["stop."], ["東京"]])
async def test_coalesced_stream_equals_one_token_at_a_time(
    model: ServedModel, stop: list[str]
) -> None:
    ids = model.encoder.tokenizer.encode(TEXT, add_special_tokens=False).ids
    reference = await run(model, ScriptedEngine(ids), stop=stop, writer_lag=0)
    ref_text, ref_ids = joined(reference)
    if not stop:
        assert ref_text == model.encoder.tokenizer.decode(ids)
    else:
        assert ref_text == TEXT[: TEXT.index(stop[0])]
    for group, lag in ((1, 3), (3, 0), (2, 7), (5, 50)):
        deltas = await run(model, ScriptedEngine(ids, group), stop=stop, writer_lag=lag)
        assert joined(deltas) == (ref_text, ref_ids), (group, lag)
        last = deltas[-1]
        assert (last.finish_reason, last.completion_tokens) == (
            reference[-1].finish_reason,
            reference[-1].completion_tokens,
        )
        assert last.prompt_tokens == reference[-1].prompt_tokens > 0
        assert all(d.finish_reason == pb.FINISH_REASON_UNSPECIFIED for d in deltas[:-1])
        assert "\ufffd" not in "".join(d.text for d in deltas)
        if lag >= 3:
            assert max(len(d.token_ids) for d in deltas) > group  # really coalesced


async def test_arrival_times_are_carried_on_deltas(model: ServedModel) -> None:
    ids = model.encoder.tokenizer.encode("Hello there, world.", add_special_tokens=False).ids
    deltas = await run(model, ScriptedEngine(ids), stop=[], writer_lag=2)
    timed = [d for d in deltas if d.token_ids]
    assert all(0 < d.first_at <= d.last_at for d in timed)
    assert all(a.last_at <= b.first_at for a, b in itertools.pairwise(timed))


async def test_a_stop_string_cancels_the_engine_request(model: ServedModel) -> None:
    ids = model.encoder.tokenizer.encode(TEXT * 20, add_special_tokens=False).ids
    engine = ScriptedEngine(ids)
    deltas = await run(model, engine, stop=["café"], writer_lag=1)
    assert joined(deltas)[0] == TEXT[: TEXT.index("café")]
    assert deltas[-1].finish_reason == pb.FINISH_REASON_STOP
    assert engine.cancelled
