"""pipeline.prepare resolves the output budget once, and generate sends exactly that number;
an engine's refusal of a tensor reaches the caller as InvalidArgument naming the request field.

A scripted engine stands in for Triton (the real one: tests/integration/test_engine_refusals.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from autoglm.server.api.validation import validate_generate
from autoglm.server.engine.client import EngineRequest
from autoglm.server.errors import EngineFailure, EngineUnavailable, InvalidArgument, ServiceError
from autoglm.server.generation import pipeline
from autoglm.server.generation.plan import GeneratePlan
from autoglm.server.generation.relay import Push
from autoglm.server.model_limits import EngineLimits
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.triton_models.refusal import Refusal
from autoglm.v1 import text_generation_pb2 as pb

CONTEXT = 64  # small, so that a short prompt leaves less room than the default budget


@pytest.fixture(scope="module")
def model(model_dir: Path) -> ServedModel:
    spec = ModelSpec(
        name="m", triton_model="m", tokenizer_dir=model_dir, max_context_tokens=CONTEXT
    )
    return load_model(spec)


def plan(prompt: str = "Hello there", **sampling: object) -> GeneratePlan:
    req = pb.GenerateRequest(model="m", prompt=prompt, sampling=pb.SamplingParams(**sampling))
    return validate_generate(req)


class Engine:
    """Records each request; streams `count` ids, or fails with `error` before any."""

    def __init__(self, count: int = 1, error: ServiceError | None = None) -> None:
        self.count = count
        self.error = error
        self.requests: list[EngineRequest] = []

    async def stream_into(
        self, request: EngineRequest, on_ids: Push, *, timeout: float | None = None
    ) -> None:
        self.requests.append(request)
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        on_ids([42] * self.count)


async def run(prepared: pipeline.Prepared, engine: Engine) -> list[pipeline.Delta]:
    gen = pipeline.generate(prepared, engine, timeout=None)  # type: ignore[arg-type]
    return [d async for d in gen]


def test_default_budget_is_the_room_the_prompt_leaves(model: ServedModel) -> None:
    prepared = pipeline.prepare(plan(), model)
    assert prepared.prompt_ids == tuple(model.encoder.encode_prompt("Hello there"))
    assert prepared.max_new_tokens == CONTEXT - len(prepared.prompt_ids) < 256


def test_explicit_budget_is_kept(model: ServedModel) -> None:
    assert pipeline.prepare(plan(max_tokens=7), model).max_new_tokens == 7


@pytest.mark.parametrize(
    ("max_tokens", "field"), [(1025, "sampling.max_tokens"), (CONTEXT, "sampling.max_tokens")]
)
def test_budget_that_cannot_fit(model: ServedModel, max_tokens: int, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        pipeline.prepare(plan(max_tokens=max_tokens), model)
    assert [f for f, _ in info.value.violations] == [field]


def test_the_agents_budget_fits_smollm2(model_dir: Path) -> None:
    # Open-AutoGLM asks for 3000 tokens per step; SmolLM2 states an 8192-token context.
    served = load_model(ModelSpec(name="m", triton_model="m", tokenizer_dir=model_dir))
    assert pipeline.prepare(plan(max_tokens=3000), served).max_new_tokens == 3000


def test_a_prompt_over_the_engines_input_limit_names_the_numbers(model_dir: Path) -> None:
    built = EngineLimits(max_input_len=8, max_seq_len=2048)
    spec = ModelSpec(name="m", triton_model="m", tokenizer_dir=model_dir, engine_limits=built)
    served = load_model(spec)
    prompt = "one two three four five six seven eight nine ten"
    tokens = len(served.encoder.encode_prompt(prompt))
    assert tokens > 8
    with pytest.raises(InvalidArgument) as info:
        pipeline.prepare(plan(prompt, max_tokens=1), served)
    [(field, description)] = info.value.violations
    assert field == "prompt"
    assert f"{tokens} prompt tokens" in description
    assert "8-token prompt limit" in description
    fits = " ".join(prompt.split()[:3])
    assert len(served.encoder.encode_prompt(fits)) <= 8
    assert pipeline.prepare(plan(fits, max_tokens=1), served).max_new_tokens == 1


async def test_the_engine_gets_the_prepared_budget(model: ServedModel) -> None:
    prepared = pipeline.prepare(plan(), model)
    engine = Engine(count=prepared.max_new_tokens)
    deltas = await run(prepared, engine)
    [request] = engine.requests
    assert request.max_new_tokens == prepared.max_new_tokens
    assert tuple(request.input_ids) == prepared.prompt_ids
    assert deltas[-1].completion_tokens == prepared.max_new_tokens
    assert deltas[-1].finish_reason == pb.FINISH_REASON_LENGTH


@pytest.mark.parametrize("temperature", [0.0, 1e-45, 9e-6])
async def test_near_zero_temperature_is_greedy(model: ServedModel, temperature: float) -> None:
    prepared = pipeline.prepare(plan(temperature=temperature, max_tokens=1), model)
    engine = Engine()
    await run(prepared, engine)
    sampling = engine.requests[0].sampling
    assert (sampling.runtime_top_k, sampling.temperature) == (1, 1.0)


async def test_the_engine_gets_penalties_but_no_log_prob_reader_unasked(
    model: ServedModel,
) -> None:
    prepared = pipeline.prepare(
        plan(max_tokens=1, frequency_penalty=0.5, presence_penalty=-0.25), model
    )
    engine = Engine()  # its stream_into takes no on_log_probs: the call must not pass one
    deltas = await run(prepared, engine)
    sampling = engine.requests[0].sampling
    assert (sampling.frequency_penalty, sampling.presence_penalty) == (0.5, -0.25)
    assert sampling.return_log_probs is False
    assert all(d.logprobs == [] for d in deltas)


def _refusal(tensor: str) -> str:
    return str(Refusal(tensor, "must be a finite number >= 0.01, got 1e-45"))


@pytest.mark.parametrize(
    ("error", "field"),
    [
        # Triton's stream error (the code dropped, the text kept)
        (EngineFailure(_refusal("repetition_penalty")), "sampling.repetition_penalty"),
        (EngineFailure(_refusal("temperature")), "sampling.temperature"),
        (EngineFailure(_refusal("runtime_top_k")), "sampling.top_k"),
        (EngineFailure(_refusal("frequency_penalty")), "sampling.frequency_penalty"),
        (EngineFailure(_refusal("presence_penalty")), "sampling.presence_penalty"),
        (EngineFailure(_refusal("return_log_probs")), "sampling.logprobs"),
        # gRPC INVALID_ARGUMENT, as the engine client maps it
        (InvalidArgument([("engine", f"refused: {_refusal('runtime_top_p')}")]), "sampling.top_p"),
    ],
)
async def test_a_refusal_names_the_request_field(
    model: ServedModel, error: ServiceError, field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await run(pipeline.prepare(plan(max_tokens=1), model), Engine(error=error))
    [(got, description)] = info.value.violations
    assert got == field
    assert "1e-45" in description


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # A value the façade chose itself (end_id): our bug, so INTERNAL, not the caller's error.
        (EngineFailure(_refusal("end_id")), EngineFailure),
        (EngineFailure("generation failed: out of memory"), EngineFailure),
        (EngineUnavailable("engine unavailable: gone"), EngineUnavailable),
    ],
)
async def test_other_engine_errors_stay_engine_errors(
    model: ServedModel, error: ServiceError, expected: type[ServiceError]
) -> None:
    with pytest.raises(ServiceError) as info:
        await run(pipeline.prepare(plan(max_tokens=1), model), Engine(error=error))
    assert type(info.value) is expected
