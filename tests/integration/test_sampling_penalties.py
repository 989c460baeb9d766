"""Presence / frequency penalties and chosen-token log-probabilities, end to end: client → façade
(mTLS + token) → real Triton → CPU reference engine with the real model. Greedy throughout, so
every result is deterministic; requests stay a few tokens long (CI time)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autoglm.client import Client, InvalidArgumentError
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.client import EngineClient
from autoglm.server.engine.link import EngineLink
from autoglm.server.errors import InvalidArgument
from autoglm.server.generation import pipeline
from autoglm.server.generation.plan import GeneratePlan, PromptInput, Sampling
from autoglm.server.models import ModelSpec, load_model

from .conftest import MODEL

pytestmark = pytest.mark.integration

# Greedy decoding goes on repeating this; penalties count the prompt's tokens too (TensorRT-LLM).
REPETITIVE = "1 2 3 1 2 3 1 2 3 1 2 3"
GREEDY = {"max_tokens": 6, "temperature": 0.0}


def test_a_penalty_changes_greedy_output_on_a_repetitive_prompt(client: Client) -> None:
    plain = client.generate(REPETITIVE, **GREEDY)
    assert plain.text.split() == ["1", "2", "3"]  # the model repeats
    frequency = client.generate(REPETITIVE, frequency_penalty=2.0, **GREEDY)
    presence = client.generate(REPETITIVE, presence_penalty=2.0, **GREEDY)
    assert frequency.token_ids != plain.token_ids
    assert presence.token_ids != plain.token_ids
    # Nothing else changes with a neutral value.
    neutral = client.generate(REPETITIVE, frequency_penalty=0.0, presence_penalty=0.0, **GREEDY)
    assert neutral.token_ids == plain.token_ids


def test_logprobs_align_with_token_ids_and_stream_equals_unary(client: Client) -> None:
    prompt = "The capital of France is"
    unary = client.generate(prompt, logprobs=True, max_tokens=8, temperature=0.0)
    assert len(unary.logprobs) == len(unary.token_ids) == unary.completion_tokens > 0
    assert all(lp <= 0.0 for lp in unary.logprobs)
    assert client.generate(prompt, max_tokens=8, temperature=0.0).logprobs == ()  # not asked
    stream = list(client.generate_stream(prompt, logprobs=True, max_tokens=8, temperature=0.0))
    assert all(len(d.logprobs) == len(d.token_ids) for d in stream)
    assert [t for d in stream for t in d.token_ids] == list(unary.token_ids)
    assert [lp for d in stream for lp in d.logprobs] == pytest.approx(unary.logprobs, abs=1e-6)


def test_logprobs_follow_ids_cut_by_a_stop_string(client: Client) -> None:
    prompt = "The capital of France is"
    full = client.generate(prompt, logprobs=True, max_tokens=8, temperature=0.0)
    assert "." in full.text
    cut = client.generate(prompt, logprobs=True, max_tokens=8, temperature=0.0, stop=".")
    assert cut.finish_reason == "stop"
    assert 0 < len(cut.token_ids) == len(cut.logprobs) <= len(full.token_ids)
    n = len(cut.token_ids)
    assert cut.token_ids == full.token_ids[:n]
    assert cut.logprobs == pytest.approx(full.logprobs[:n], abs=1e-6)


@pytest.mark.parametrize("field", ["frequency_penalty", "presence_penalty"])
def test_out_of_range_penalty_is_invalid_argument_naming_the_field(
    client: Client, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        client.generate("Hi", max_tokens=1, **{field: 2.5})  # type: ignore[arg-type]
    assert [f for f, _ in info.value.field_violations] == [f"sampling.{field}"]


@pytest.mark.parametrize(
    ("field", "value"), [("frequency_penalty", math.nan), ("presence_penalty", math.inf)]
)
async def test_the_engine_s_refusal_names_the_request_field(
    triton: TritonProcess, engine_link: EngineLink, model_dir: Path, field: str, value: float
) -> None:
    """A plan that skipped the façade's validation: the CPU engine refuses the tensor and the
    caller's InvalidArgument names `sampling.<field>` (plan.refused_field)."""
    served = load_model(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir))
    sampling = Sampling(2, 0.0, 1.0, 1, 1, 1.0, (), **{field: value})  # type: ignore[arg-type]
    plan = GeneratePlan("skipped-validation", MODEL, PromptInput("Hi", ()), sampling)
    client = EngineClient(
        triton.grpc_target,
        credentials=engine_link.channel_credentials(),
        metadata=engine_link.metadata(),
        ssl_context=engine_link.ssl_context(),
    )
    try:
        with pytest.raises(InvalidArgument) as info:
            _ = [
                d
                async for d in pipeline.generate(pipeline.prepare(plan, served), client, timeout=60)
            ]
    finally:
        await client.close()
    [(got, description)] = info.value.violations
    assert got == f"sampling.{field}"
    assert f"'{field}'" in description
