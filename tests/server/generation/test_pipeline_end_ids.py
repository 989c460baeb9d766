"""pipeline.generate with several end-of-sequence ids: the first goes as `end_id`, the others as
stop words, and whichever ends the answer is in neither its text, its ids nor its usage.

TensorRT-LLM leaves `end_id` out of its output but keeps a stop word's tokens; the scripted
engines below send the stop word as TensorRT-LLM does. The tokenizer is the real SmolLM2 one,
whose <|im_end|> (id 2) plays Llama-3.1's <|eot_id|>: a turn end listed after the first id.
The real engine: tests/integration/test_end_of_sequence.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.server.api.validation import validate_generate
from autoglm.server.engine.client import EngineRequest
from autoglm.server.generation import pipeline
from autoglm.server.generation.relay import Push
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.v1 import text_generation_pb2 as pb

FIRST, TURN_END = 0, 2  # <|endoftext|>, <|im_end|>


@pytest.fixture(scope="module")
def model(model_dir: Path) -> ServedModel:
    served = load_model(ModelSpec(name="m", triton_model="m", tokenizer_dir=model_dir))
    return replace(served, end_ids=(FIRST, TURN_END))


class Engine:
    """Sends `pushes` (one engine response each), with log-probabilities when asked; then, if
    `then_hang`, waits until cancelled (an engine that ignores the stop word)."""

    def __init__(self, *pushes: list[int], then_hang: bool = False) -> None:
        self.pushes = pushes
        self.then_hang = then_hang
        self.requests: list[EngineRequest] = []
        self.cancelled = False
        self.finished = False

    async def stream_into(
        self,
        request: EngineRequest,
        on_ids: Push,
        *,
        timeout: float | None = None,
        on_log_probs: Push | None = None,
    ) -> None:
        self.requests.append(request)
        try:
            for ids in self.pushes:
                if on_log_probs is not None:
                    on_log_probs([-0.5] * len(ids))  # type: ignore[list-item]
                on_ids(ids)
                await asyncio.sleep(0)
            if self.then_hang:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True


def words(model: ServedModel, text: str) -> list[int]:
    return model.encoder.tokenizer.encode(text, add_special_tokens=False).ids


async def run(
    model: ServedModel, engine: Engine, **sampling: object
) -> tuple[list[pipeline.Delta], pipeline.Delta]:
    params = pb.SamplingParams(max_tokens=64, skip_special_tokens=False)
    params.MergeFrom(pb.SamplingParams(**sampling))  # type: ignore[arg-type]
    plan = validate_generate(pb.GenerateRequest(model="m", prompt="hi", sampling=params))
    gen = pipeline.generate(pipeline.prepare(plan, model), engine, timeout=None)  # type: ignore[arg-type]
    deltas = [d async for d in gen]
    return deltas, deltas[-1]


@pytest.mark.parametrize("batched", [False, True], ids=["per_token", "one_response"])
async def test_a_later_end_id_ends_the_answer_before_it(model: ServedModel, batched: bool) -> None:
    hello = words(model, "Hello there")
    pushes = [[*hello, TURN_END]] if batched else [[t] for t in [*hello, TURN_END]]
    engine = Engine(*pushes)
    deltas, last = await run(model, engine)
    [request] = engine.requests
    assert (request.end_id, request.stop_words) == (FIRST, ((TURN_END,),))
    text = "".join(d.text for d in deltas)
    assert text == "Hello there"  # no <|im_end|>, although special tokens are kept
    assert [t for d in deltas for t in d.token_ids] == hello
    assert last.completion_tokens == len(hello)
    assert last.finish_reason == pb.FINISH_REASON_STOP
    # The engine ended the request itself: the façade waited for it, cancelled nothing.
    assert engine.finished and not engine.cancelled


async def test_the_end_id_reaching_max_tokens_is_stop(model: ServedModel) -> None:
    hello = words(model, "Hello")
    engine = Engine(*[[t] for t in [*hello, TURN_END]])
    _, last = await run(model, engine, max_tokens=len(hello) + 1)
    assert last.completion_tokens == len(hello)
    assert last.finish_reason == pb.FINISH_REASON_STOP


async def test_the_first_end_id_is_cut_too(model: ServedModel) -> None:
    # TensorRT-LLM never sends end_id; an engine that did is read the same way.
    hello = words(model, "Hello")
    deltas, last = await run(model, Engine([*hello, FIRST]))
    assert "".join(d.text for d in deltas) == "Hello"
    assert last.completion_tokens == len(hello)
    assert last.finish_reason == pb.FINISH_REASON_STOP


async def test_an_engine_ignoring_the_stop_word_is_cancelled(model: ServedModel) -> None:
    hello = words(model, "Hello")
    engine = Engine([*hello, TURN_END], words(model, " more"), then_hang=True)
    deltas, last = await run(model, engine)
    assert "".join(d.text for d in deltas) == "Hello"
    assert [t for d in deltas for t in d.token_ids] == hello
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert engine.cancelled


async def test_log_probabilities_stay_one_per_id(model: ServedModel) -> None:
    hello = words(model, "Hello there")
    deltas, last = await run(model, Engine([*hello, TURN_END]), logprobs=True)
    assert [len(d.logprobs) for d in deltas] == [len(d.token_ids) for d in deltas]
    assert sum(len(d.logprobs) for d in deltas) == last.completion_tokens == len(hello)


async def test_a_stop_string_before_the_end_id_still_wins(model: ServedModel) -> None:
    hello = words(model, "Hello there")
    deltas, last = await run(model, Engine([*hello, TURN_END]), stop=["there"])
    assert "".join(d.text for d in deltas) == "Hello "
    assert last.finish_reason == pb.FINISH_REASON_STOP
