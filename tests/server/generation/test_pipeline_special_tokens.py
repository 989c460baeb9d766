"""pipeline.generate with `skip_special_tokens`: special tokens in the engine's output leave the
text by default and stay in it when asked (older Open-AutoGLM clients ask, to keep their tags).
A scripted engine stands in for Triton; the tokenizer is the real SmolLM2 one."""

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


@pytest.fixture(scope="module")
def model(model_dir: Path) -> ServedModel:
    return load_model(ModelSpec(name="m", triton_model="m", tokenizer_dir=model_dir))


class ScriptedEngine:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    async def stream_into(
        self, request: EngineRequest, on_ids: Push, *, timeout: float | None = None, **_: object
    ) -> None:
        for token in self.ids:
            on_ids([token])
            await asyncio.sleep(0)


async def text_of(model: ServedModel, ids: list[int], skip: bool | None) -> str:
    sampling = pb.SamplingParams(max_tokens=64)
    if skip is not None:
        sampling.skip_special_tokens = skip
    plan = validate_generate(pb.GenerateRequest(model="m", prompt="hi", sampling=sampling))
    gen = pipeline.generate(pipeline.prepare(plan, model), ScriptedEngine(ids), timeout=None)  # type: ignore[arg-type]
    return "".join([d.text async for d in gen])


async def test_special_tokens_are_skipped_unless_kept(model: ServedModel) -> None:
    tok = model.encoder.tokenizer
    start = tok.token_to_id("<|im_start|>")
    assert start is not None
    ids = [*tok.encode("assistant", add_special_tokens=False).ids, start]
    ids += tok.encode("hello", add_special_tokens=False).ids
    default = await text_of(model, ids, None)
    assert default == await text_of(model, ids, True)
    assert "<|im_start|>" not in default
    kept = await text_of(model, ids, False)
    assert "<|im_start|>" in kept
    assert kept.replace("<|im_start|>", "") == default
