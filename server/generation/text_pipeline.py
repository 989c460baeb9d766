"""One generation on a text engine (the vLLM contract): prompt text and images in, text out.

The sibling of pipeline.generate for models served by Triton's vLLM backend, or by its CPU
reference engine (`triton_models/cpu_vl/`): the engine tokenizes and detokenizes, so the deltas
carry text and token counts, not ids. Everything else is the same: the prepared plan (its
output budget, admission's), the relay between reader and writer, stop strings applied by the
façade as well (the engine gets them too, so it stops early), finish reasons and usage, where
the prompt's tokens are the engine's own count (image tokens included).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from autoglm.server.engine.client import EngineClient
from autoglm.server.engine.text_request import TextEngineRequest, TextStep
from autoglm.server.errors import EngineFailure, InvalidArgument
from autoglm.server.generation.pipeline import Delta, Prepared, engine_error
from autoglm.server.generation.plan import engine_sampling
from autoglm.server.generation.relay import Push, Relay
from autoglm.server.generation.stop_strings import StopStringMatcher
from autoglm.server.telemetry import tracing
from autoglm.triton_models import vllm_contract as vc
from autoglm.v1 import text_generation_pb2 as pb


class _EngineCounts:
    """What the engine reported besides text: its prompt count and finish reason."""

    __slots__ = ("finish", "input_tokens")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.finish: str | None = None


async def generate_text(
    prepared: Prepared, engine: EngineClient, *, timeout: float | None
) -> AsyncIterator[Delta]:
    """Yield text deltas; the last one has finish_reason and usage set."""
    plan, model = prepared.plan, prepared.model
    assert prepared.prompt_text is not None, "prepare() renders the prompt of a text engine"
    tracing.annotate(
        {
            "autoglm.tokenize_seconds": round(prepared.tokenize_seconds, 6),
            "gen_ai.usage.input_tokens": len(prepared.prompt_ids),
        }
    )
    max_new = prepared.max_new_tokens
    request = TextEngineRequest(
        triton_model=model.spec.triton_model,
        request_id=plan.request_id,
        prompt=prepared.prompt_text,
        images=[image.data for image in prepared.images],
        max_new_tokens=max_new,
        sampling=engine_sampling(plan.sampling),
        stop=plan.sampling.stop,
        skip_special_tokens=plan.sampling.skip_special_tokens,
    )
    counts = _EngineCounts()
    logprobs = plan.sampling.logprobs
    stops = StopStringMatcher(plan.sampling.stop)

    async def read(_push: Push) -> None:
        def on_step(step: TextStep) -> None:
            if step.input_tokens is not None:
                counts.input_tokens = step.input_tokens
            if step.finish_reason is not None:
                counts.finish = step.finish_reason
            if step.text or step.new_tokens:
                if logprobs:
                    relay.push_logprobs(step.logprobs or [])
                relay.push_text(step.text, step.new_tokens)

        try:
            await engine.stream_text_into(request, on_step, timeout=timeout)
        except (EngineFailure, InvalidArgument) as exc:
            raise engine_error(exc) from None

    relay = Relay(read, logprobs=logprobs)
    completion = 0
    stopped = False
    async with relay:
        while (batch := await relay.take()) is not None:
            text, stopped = stops.feed(batch.text)
            completion += batch.tokens
            delta = Delta(
                text, [], first_at=batch.first_at, last_at=batch.last_at, text_tokens=batch.tokens
            )
            if batch.logprobs is not None:
                delta.logprobs = batch.logprobs
            yield delta
            if stopped:
                break
    tail = ""
    if not stopped:
        tail = stops.flush()
        stopped = stops.stopped
    if counts.finish == vc.FINISH_ABORT:
        raise EngineFailure(f"the engine aborted request {plan.request_id}")
    if stopped or counts.finish == vc.FINISH_STOP:
        finish = pb.FINISH_REASON_STOP
    elif counts.finish == vc.FINISH_LENGTH or completion >= max_new:
        finish = pb.FINISH_REASON_LENGTH
    else:
        finish = pb.FINISH_REASON_STOP
    prompt_tokens = counts.input_tokens or len(prepared.prompt_ids)
    yield Delta(tail, [], finish, prompt_tokens, completion)
