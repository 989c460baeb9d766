"""text_pipeline.generate_text: one generation on a text engine (the vLLM contract), with a
scripted stand-in for EngineClient.stream_text_into (no gRPC, no Triton; the real engine:
tests/integration/) and the tiny GLM-4.1V's tokenizer for the prompt side.

The deltas carry text and token counts (no ids); the façade applies stop strings and cancels the
engine call on one; the finish reason follows the engine's; usage counts the prompt as the engine
did (image tokens included) and the completion as the sum of the engine's new tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path

import pytest
from PIL import Image

from autoglm.server.api.validation import validate_generate
from autoglm.server.engine.text_request import TextEngineRequest, TextStep
from autoglm.server.errors import EngineFailure, EngineUnavailable, ServiceError
from autoglm.server.generation import pipeline
from autoglm.server.generation.plan import GeneratePlan
from autoglm.server.generation.relay import Relay
from autoglm.server.generation.text_pipeline import generate_text
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.triton_models import vllm_contract as vc
from autoglm.v1 import text_generation_pb2 as pb

PH = "<|begin_of_image|><|image|><|end_of_image|>"


def step(
    text: str,
    tokens: int = 1,
    *,
    input_tokens: int | None = None,
    finish: str | None = None,
    logprobs: list[float] | None = None,
    final: bool = False,
) -> TextStep:
    return TextStep(text, tokens, input_tokens, finish, logprobs, final)


class ScriptedTextEngine:
    """TEST STAND-IN for EngineClient.stream_text_into: hands `steps` to `on_step` one per loop
    turn, then raises `error` if set, or with `forever` keeps sending "x" until cancelled."""

    def __init__(
        self, steps: list[TextStep], *, error: ServiceError | None = None, forever: bool = False
    ) -> None:
        self.steps = steps
        self.error = error
        self.forever = forever
        self.requests: list[TextEngineRequest] = []
        self.cancelled = False

    async def stream_text_into(
        self, request: TextEngineRequest, on_step: object, *, timeout: float | None = None
    ) -> None:
        self.requests.append(request)
        try:
            for s in self.steps:
                on_step(s)  # type: ignore[operator]
                await asyncio.sleep(0)
            if self.error is not None:
                raise self.error
            while self.forever:
                on_step(step("x"))  # type: ignore[operator]
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


@pytest.fixture(scope="module")
def vl(vlm_dir: Path) -> ServedModel:
    return load_model(
        ModelSpec(name="vl", triton_model="vl_engine", tokenizer_dir=vlm_dir, engine="vllm")
    )


def plan(**sampling: object) -> GeneratePlan:
    req = pb.GenerateRequest(
        model="vl",
        request_id="req-1",
        messages=[pb.ChatMessage(role="user", content="Say hello.")],
        sampling=pb.SamplingParams(**sampling),
    )
    return validate_generate(req)


async def run(
    prepared: pipeline.Prepared, engine: ScriptedTextEngine, *, writer_lag: int = 0
) -> list[pipeline.Delta]:
    out = []
    async for delta in generate_text(prepared, engine, timeout=None):  # type: ignore[arg-type]
        out.append(delta)
        for _ in range(writer_lag):  # a slow write: the engine keeps sending meanwhile
            await asyncio.sleep(0)
    return out


def text_of(deltas: list[pipeline.Delta]) -> str:
    return "".join(d.text for d in deltas)


HELLO = [
    step("Hel", input_tokens=42),
    step("lo, ", 2),
    step("", 1),  # a token whose character the engine holds back
    step("wörld."),
    step("", 0, finish=vc.FINISH_STOP, final=True),  # the empty final response
]


@pytest.mark.parametrize("writer_lag", [0, 3])
async def test_text_counts_finish_and_usage(vl: ServedModel, writer_lag: int) -> None:
    prepared = pipeline.prepare(plan(), vl)
    deltas = await run(prepared, ScriptedTextEngine(HELLO), writer_lag=writer_lag)
    assert text_of(deltas) == "Hello, wörld."
    *body, last = deltas
    assert all(d.token_ids == [] for d in deltas)
    assert sum(d.text_tokens for d in body) == sum(d.tokens for d in body) == 5
    assert all(d.finish_reason == pb.FINISH_REASON_UNSPECIFIED for d in body)
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
        pb.FINISH_REASON_STOP,
        42,  # the engine's count, not the façade's
        5,
    )
    assert all(0 < d.first_at <= d.last_at for d in body)


async def test_the_request_carries_the_prepared_prompt_and_sampling(vl: ServedModel) -> None:
    p = plan(max_tokens=9, stop=["</answer>"], skip_special_tokens=False, temperature=0.0, seed=3)
    prepared = pipeline.prepare(p, vl)
    engine = ScriptedTextEngine(HELLO)
    await run(prepared, engine)
    (request,) = engine.requests
    assert request.triton_model == "vl_engine"
    assert request.request_id == "req-1"
    assert request.prompt == prepared.prompt_text == vl.encoder.render_chat(p.input.messages)
    assert list(request.images) == []
    assert request.max_new_tokens == prepared.max_new_tokens == 9
    assert list(request.stop) == ["</answer>"]  # the engine stops early too
    assert request.skip_special_tokens is False
    assert (request.sampling.runtime_top_k, request.sampling.seed) == (1, 3)  # greedy


async def test_images_go_to_the_engine_as_checked(vl: ServedModel) -> None:
    out = io.BytesIO()
    Image.new("RGB", (1080, 2400), "#3a7").save(out, format="PNG")
    req = pb.GenerateRequest(
        model="vl",
        messages=[
            pb.ChatMessage(
                role="user",
                parts=[
                    pb.ContentPart(image=pb.Image(data=out.getvalue())),
                    pb.ContentPart(text="Open the settings."),
                ],
            )
        ],
    )
    p = validate_generate(req)
    images = await pipeline.check_request_images(p, vl)
    prepared = pipeline.prepare(p, vl, images)
    engine = ScriptedTextEngine([step("ok", input_tokens=len(prepared.prompt_ids), final=True)])
    deltas = await run(prepared, engine)
    (request,) = engine.requests
    assert [bytes(i) for i in request.images] == [images[0].data]
    assert request.prompt.count(PH) == 1  # the engine expands the placeholder itself
    assert deltas[-1].prompt_tokens == len(prepared.prompt_ids)  # image tokens counted


@pytest.mark.parametrize(
    ("finish", "expected"),
    [(vc.FINISH_STOP, pb.FINISH_REASON_STOP), (vc.FINISH_LENGTH, pb.FINISH_REASON_LENGTH)],
)
async def test_the_finish_reason_is_the_engines(
    vl: ServedModel, finish: str, expected: int
) -> None:
    prepared = pipeline.prepare(plan(max_tokens=50), vl)
    engine = ScriptedTextEngine([step("a"), step("b", finish=finish, final=True)])
    last = (await run(prepared, engine))[-1]
    assert (last.finish_reason, last.completion_tokens) == (expected, 2)


@pytest.mark.parametrize(
    ("count", "expected"), [(3, pb.FINISH_REASON_LENGTH), (2, pb.FINISH_REASON_STOP)]
)
async def test_without_a_finish_reason_the_budget_decides(
    vl: ServedModel, count: int, expected: int
) -> None:
    prepared = pipeline.prepare(plan(max_tokens=3), vl)
    engine = ScriptedTextEngine([step("t") for _ in range(count)])
    last = (await run(prepared, engine))[-1]
    assert (last.finish_reason, last.completion_tokens) == (expected, count)


async def test_an_aborted_request_is_an_engine_failure(vl: ServedModel) -> None:
    prepared = pipeline.prepare(plan(), vl)
    engine = ScriptedTextEngine([step("part"), step("", 0, finish=vc.FINISH_ABORT, final=True)])
    deltas: list[pipeline.Delta] = []
    with pytest.raises(EngineFailure, match="aborted request req-1"):
        async for delta in generate_text(prepared, engine, timeout=None):  # type: ignore[arg-type]
            deltas.append(delta)
    assert text_of(deltas) == "part"


async def test_a_stop_string_cuts_the_text_and_cancels_the_engine(vl: ServedModel) -> None:
    prepared = pipeline.prepare(plan(stop=["</answer>"]), vl)
    # The stop string split over responses, text after it in the same response, then more.
    engine = ScriptedTextEngine(
        [step("<answer>do(action=Tap)</ans", 8), step("wer> and more", 3)], forever=True
    )
    deltas = await run(prepared, engine)
    assert text_of(deltas) == "<answer>do(action=Tap)"
    assert deltas[-1].finish_reason == pb.FINISH_REASON_STOP
    assert engine.cancelled


async def test_a_stop_string_prefix_at_the_end_is_flushed(vl: ServedModel) -> None:
    prepared = pipeline.prepare(plan(stop=["</answer>"]), vl)
    engine = ScriptedTextEngine([step("done </ans"), step("", 0, finish="stop", final=True)])
    deltas = await run(prepared, engine)
    assert text_of(deltas) == "done </ans"
    assert deltas[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_usage_falls_back_to_the_facades_count(vl: ServedModel) -> None:
    prepared = pipeline.prepare(plan(), vl)
    engine = ScriptedTextEngine([step("hi", finish="stop", final=True)])  # no num_input_tokens
    last = (await run(prepared, engine))[-1]
    assert last.prompt_tokens == len(prepared.prompt_ids) > 0


async def test_text_before_an_engine_error_is_delivered_then_the_error(vl: ServedModel) -> None:
    prepared = pipeline.prepare(plan(), vl)
    engine = ScriptedTextEngine([step("Hello"), step(" there")], error=EngineFailure("boom"))
    deltas: list[pipeline.Delta] = []
    with pytest.raises(EngineFailure, match="boom"):
        async for delta in generate_text(prepared, engine, timeout=None):  # type: ignore[arg-type]
            deltas.append(delta)
    assert text_of(deltas) == "Hello there"
    assert all(d.finish_reason == pb.FINISH_REASON_UNSPECIFIED for d in deltas)


async def test_an_unavailable_engine_stays_unavailable(vl: ServedModel) -> None:
    prepared = pipeline.prepare(plan(), vl)
    engine = ScriptedTextEngine([], error=EngineUnavailable("engine unavailable: gone"))
    with pytest.raises(EngineUnavailable):
        await run(prepared, engine)


@pytest.mark.parametrize("writer_lag", [0, 5])
async def test_logprobs_ride_with_their_deltas(vl: ServedModel, writer_lag: int) -> None:
    # prepare refuses logprobs on a text engine (neither front door carries the engine's token
    # texts yet); generate_text's own plumbing is checked on a plan that asks for them.
    prepared = pipeline.prepare(plan(), vl)
    sampling = dataclasses.replace(prepared.plan.sampling, logprobs=True)
    prepared = dataclasses.replace(
        prepared, plan=dataclasses.replace(prepared.plan, sampling=sampling)
    )
    values = [[-0.5], [-1.0, -1.5], [-2.0], [-2.5, -3.0, -3.5]]
    steps = [step(f"w{i} ", len(v), logprobs=v) for i, v in enumerate(values)]
    deltas = await run(prepared, ScriptedTextEngine(steps), writer_lag=writer_lag)
    body = [d for d in deltas if d.text_tokens]
    assert [lp for d in body for lp in d.logprobs] == [lp for v in values for lp in v]
    assert all(len(d.logprobs) == d.text_tokens for d in body)
    assert deltas[-1].completion_tokens == 7


# ---- the relay's text side (Relay.push_text, Batch.text / tokens) ------------------------------


async def test_text_that_piled_up_is_taken_as_one_batch() -> None:
    pushed = asyncio.Event()
    release = asyncio.Event()

    async def read(_push: object) -> None:
        relay.push_text("Hel", 1)
        await release.wait()
        relay.push_logprobs([-1.0, -2.0])
        relay.push_text("lo", 2)
        relay.push_logprobs([])
        relay.push_text("", 0)  # the engine's empty final response
        relay.push_logprobs([-3.0])
        relay.push_text(" 東京", 1)
        pushed.set()

    relay = Relay(read, logprobs=True)
    async with relay:
        first = await relay.take()
        assert first is not None
        assert (first.ids, first.text, first.tokens, first.logprobs) == ([], "Hel", 1, [])
        release.set()
        await pushed.wait()  # the writer was "busy": three responses arrived meanwhile
        batch = await relay.take()
        assert batch is not None
        assert (batch.ids, batch.text, batch.tokens) == ([], "lo 東京", 3)
        assert batch.logprobs == [-1.0, -2.0, -3.0]
        assert first.first_at <= first.last_at <= batch.first_at <= batch.last_at
        assert await relay.take() is None
