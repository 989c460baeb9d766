"""pipeline.generate with `logprobs`: every delta carries one log-probability per token id, in
order, however the relay coalesced the engine's responses and wherever a stop string cut the
ids. A scripted engine stands in for Triton (the real one: tests/integration/
test_sampling_penalties.py); the tokenizer is the real SmolLM2 one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from autoglm.server.api.validation import validate_generate
from autoglm.server.engine.client import EngineRequest
from autoglm.server.generation import pipeline
from autoglm.server.generation.relay import Push
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.v1 import text_generation_pb2 as pb

TEXT = "One fish, two fish, red fish, blue fish. Stop here: the rest is never sent."


@pytest.fixture(scope="module")
def model(model_dir: Path) -> ServedModel:
    return load_model(ModelSpec(name="m", triton_model="m", tokenizer_dir=model_dir))


def value_of(token_id: int) -> float:
    """A distinct log-probability per id, so that a misalignment shows."""
    return -token_id / 1024


class ScriptedEngine:
    """Streams `ids` `group` at a time: the values first, then the ids (as EngineClient does)."""

    def __init__(self, ids: list[int], group: int) -> None:
        self.ids, self.group = ids, group
        self.requests: list[EngineRequest] = []

    async def stream_into(
        self,
        request: EngineRequest,
        on_ids: Push,
        *,
        timeout: float | None = None,
        on_log_probs: object = None,
    ) -> None:
        self.requests.append(request)
        assert callable(on_log_probs)
        for i in range(0, len(self.ids), self.group):
            chunk = self.ids[i : i + self.group]
            on_log_probs([value_of(t) for t in chunk])
            on_ids(chunk)
            await asyncio.sleep(0)


async def run(
    model: ServedModel, engine: ScriptedEngine, *, stop: list[str], writer_lag: int
) -> list[pipeline.Delta]:
    sampling = pb.SamplingParams(max_tokens=512, stop=stop, logprobs=True)
    plan = validate_generate(pb.GenerateRequest(model="m", prompt="hi", sampling=sampling))
    out = []
    gen = pipeline.generate(pipeline.prepare(plan, model), engine, timeout=None)  # type: ignore[arg-type]
    async for delta in gen:
        out.append(delta)
        for _ in range(writer_lag):
            await asyncio.sleep(0)
    return out


@pytest.mark.parametrize("stop", [[], ["Stop here"]])
@pytest.mark.parametrize(("group", "lag"), [(1, 0), (3, 0), (2, 5), (7, 30)])
async def test_logprobs_align_with_token_ids(
    model: ServedModel, stop: list[str], group: int, lag: int
) -> None:
    ids = model.encoder.tokenizer.encode(TEXT, add_special_tokens=False).ids
    engine = ScriptedEngine(ids, group)
    deltas = await run(model, engine, stop=stop, writer_lag=lag)
    assert engine.requests[0].sampling.return_log_probs is True
    for d in deltas:
        assert d.logprobs == [value_of(t) for t in d.token_ids]
    sent = [t for d in deltas for t in d.token_ids]
    if stop:
        assert len(sent) < len(ids)  # the stop string cut the ids (and their values) short
        assert "".join(d.text for d in deltas) == TEXT[: TEXT.index("Stop here")]
    else:
        assert sent == ids
