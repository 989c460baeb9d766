"""One generation, from checked plan to text deltas: tokenize → engine → detokenize → stop.

Two steps. `prepare` tokenizes the prompt and resolves the output budget once, into a frozen
`Prepared`; the caller admits the request with `Prepared.max_new_tokens` (limits.py), and
`generate` sends exactly that number to the engine — admission, the generation span and the
engine request cannot disagree about it.

Independent of gRPC's servicer API: it yields `Delta`s, which the service turns into messages
(streaming) or folds into one response (unary), so both RPCs share exactly one code path and
the streamed text always concatenates to the unary text.

The engine stream is read by a relay task (relay.py); each delta is everything that arrived
while the previous one was being written, detokenized and stop-checked in one step, so a slow
caller gets fewer, larger messages and the per-token work is a list append. An engine's refusal
of a tensor (refusal.py) reaches the caller as INVALID_ARGUMENT naming the request field.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from autoglm.server.adapters import ServedAdapter
from autoglm.server.engine.client import EngineClient, EngineRequest
from autoglm.server.engine.lora import LoraRequest, stream_with_lora
from autoglm.server.errors import EngineFailure, InvalidArgument, ServiceError
from autoglm.server.generation.detokenizer import IncrementalDetokenizer
from autoglm.server.generation.images import CheckedImage, check_images
from autoglm.server.generation.plan import (
    GeneratePlan,
    PromptInput,
    check_max_output,
    engine_sampling,
    refused_field,
    resolve_max_tokens,
)
from autoglm.server.generation.relay import Push, Relay
from autoglm.server.generation.stop_strings import StopStringMatcher
from autoglm.server.models import ServedModel
from autoglm.server.telemetry import tracing
from autoglm.server.tokenization import ChatTemplateError, expand_image_tokens
from autoglm.triton_models.refusal import parse_refusal
from autoglm.v1 import text_generation_pb2 as pb


@dataclass(slots=True)
class Delta:
    """Text and the ids it came from; the last delta carries finish reason and usage."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # When the engine delivered the first and the last of `token_ids` (time.perf_counter s; 0
    # without ids): metrics and traces time tokens by their arrival, not by their write.
    first_at: float = 0.0
    last_at: float = 0.0
    # The chosen tokens' log-probabilities, one per id of `token_ids` (also when a stop string
    # cut the ids short); empty unless the plan's sampling asks for them.
    logprobs: list[float] = field(default_factory=list)
    # A text engine's delta (text_pipeline.py) has no ids: the tokens its text came from.
    text_tokens: int = 0

    @property
    def tokens(self) -> int:
        """The generated tokens this delta carries (ids, or a text engine's count)."""
        return len(self.token_ids) or self.text_tokens


def encode_input(
    model: ServedModel, prompt_input: PromptInput, images: Sequence[CheckedImage] = ()
) -> list[int]:
    """The prompt's token ids as the engine will see them (each image's token expanded)."""
    ids = _encode(model, prompt_input, images)[1]
    if not ids:
        raise InvalidArgument([("prompt", "encodes to no tokens")])
    return ids


def _encode(
    model: ServedModel, prompt_input: PromptInput, images: Sequence[CheckedImage]
) -> tuple[str | None, list[int]]:
    """(the rendered prompt text for a text engine, else None; the prompt's token ids)."""
    encoder, vision = model.encoder, model.vision
    if vision is not None:
        _refuse_image_tokens(prompt_input, vision.image_token)
    try:
        if not model.returns_text:
            if prompt_input.prompt is not None:
                return None, encoder.encode_prompt(prompt_input.prompt)
            return None, encoder.encode_chat(prompt_input.messages)
        # A text engine tokenizes the text itself (as vLLM does: a raw prompt with the
        # tokenizer's special tokens, a rendered chat without, the template holding them).
        if prompt_input.prompt is not None:
            text, special = prompt_input.prompt, True
        else:
            text, special = encoder.render_chat(prompt_input.messages), False
    except ChatTemplateError as exc:
        raise InvalidArgument([("messages", str(exc))]) from None
    ids = encoder.tokenizer.encode(text, add_special_tokens=special).ids
    if vision is not None and images:
        ids = expand_image_tokens(ids, vision.image_token_id, [i.tokens for i in images])
    return text, ids


def _refuse_image_tokens(prompt_input: PromptInput, image_token: str) -> None:
    """A caller's text may not carry the image token: images come as image parts only (the
    engine would take the text's token for an image and find one too few)."""
    why = f"contains the image token {image_token!r}: send images as image parts"
    if prompt_input.prompt is not None and image_token in prompt_input.prompt:
        raise InvalidArgument([("prompt", why)])
    bad = [
        (f"messages[{i}].content", why)
        for i, m in enumerate(prompt_input.messages)
        if image_token in m.content
    ]
    if bad:
        raise InvalidArgument(bad)


async def check_request_images(plan: GeneratePlan, model: ServedModel) -> tuple[CheckedImage, ...]:
    """The plan's images checked against the model's rules, off the event loop (decoding and
    resizing a screenshot takes tens of milliseconds); InvalidArgument naming the image."""
    images = plan.input.images
    if not images:
        return ()
    if model.vision is None:
        raise InvalidArgument([(images[0].field, "this model does not accept images (text only)")])
    t = time.perf_counter()
    checked = await asyncio.to_thread(check_images, images, model.vision)
    tracing.annotate(
        {
            "autoglm.image_seconds": round(time.perf_counter() - t, 6),
            "autoglm.images": len(checked),
        }
    )
    return checked


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked plan made ready for the engine: its prompt ids and its one output budget."""

    plan: GeneratePlan
    model: ServedModel
    prompt_ids: tuple[int, ...]
    max_new_tokens: int  # resolved once: admission, the span and the engine request use it
    tokenize_seconds: float
    prompt_text: str | None = None  # the rendered prompt, for a text engine (text_pipeline.py)
    images: tuple[CheckedImage, ...] = ()  # checked and resized, in placeholder order
    adapter: ServedAdapter | None = None  # the plan's adapter, resolved (calls.py)


def prepare(
    plan: GeneratePlan,
    model: ServedModel,
    images: tuple[CheckedImage, ...] = (),
    adapter: ServedAdapter | None = None,
) -> Prepared:
    """Tokenize and resolve max_tokens (InvalidArgument when the request cannot fit the model).

    `images` are the plan's, checked (check_request_images); `adapter` its adapter, resolved."""
    limits = model.limits
    if model.returns_text and plan.sampling.logprobs:
        # The vLLM contract returns log-probabilities with the engine's own token texts, which
        # neither front door carries yet (token_ids are empty on that contract).
        raise InvalidArgument(
            [("sampling.logprobs", f"not supported by this model's engine ({model.spec.engine})")]
        )
    # Before tokenizing: a max_tokens no prompt could make valid costs no tokenization.
    check_max_output(plan.sampling.max_tokens, limits.max_output)
    t = time.perf_counter()
    prompt_text, prompt_ids = _encode(model, plan.input, images)
    if not prompt_ids:
        raise InvalidArgument([("prompt", "encodes to no tokens")])
    tokenize_s = time.perf_counter() - t
    max_new = resolve_max_tokens(
        plan.sampling.max_tokens,
        prompt_tokens=len(prompt_ids),
        max_context=limits.max_context,
        max_output=limits.max_output,
        default=limits.default_max_tokens,
        max_input=limits.max_input,
    )
    return Prepared(
        plan, model, tuple(prompt_ids), max_new, tokenize_s, prompt_text, images, adapter
    )


async def generate(
    prepared: Prepared, engine: EngineClient, *, timeout: float | None
) -> AsyncIterator[Delta]:
    """Yield text deltas; the last one has finish_reason and usage set."""
    perf = time.perf_counter
    plan, model, prompt_ids = prepared.plan, prepared.model, prepared.prompt_ids
    # On the generation span (the current one), as the detokenizing time below.
    tracing.annotate(
        {
            "autoglm.tokenize_seconds": round(prepared.tokenize_seconds, 6),
            "gen_ai.usage.input_tokens": len(prompt_ids),
        }
    )
    max_new = prepared.max_new_tokens
    request = EngineRequest(
        triton_model=model.spec.triton_model,
        request_id=plan.request_id,
        input_ids=prompt_ids,
        max_new_tokens=max_new,
        end_id=model.end_id,
        pad_id=model.pad_id,
        sampling=engine_sampling(plan.sampling),
        # The model's other end-of-sequence ids. Stop strings are matched here on the text, so
        # no caller's words join them.
        stop_words=model.stop_words,
        lora=LoraRequest(prepared.adapter.task_id) if prepared.adapter else None,
    )
    adapter = prepared.adapter
    detok = IncrementalDetokenizer(
        model.encoder.tokenizer, skip_special_tokens=plan.sampling.skip_special_tokens
    )
    stops = StopStringMatcher(plan.sampling.stop)
    # With stop strings a batch is fed token by token, so that the ids (and the completion
    # count) end at the token that completed the stop whatever the coalescing was.
    per_token = bool(plan.sampling.stop)
    completion = 0
    stopped = False
    ended = False  # on an end-of-sequence id
    detok_s = 0.0  # time spent detokenizing, put on the generation span (a span per token
    # would cost more than the work it measures)

    logprobs = plan.sampling.logprobs

    async def read(push: Push) -> None:
        try:
            if adapter is not None:  # its weights with the task's first request (lora.py)
                await stream_with_lora(
                    engine,
                    request,
                    adapter.arrays,
                    push,
                    timeout=timeout,
                    on_log_probs=relay.push_logprobs if logprobs else None,
                )
            elif logprobs:  # the ids' values go to the relay ahead of the ids (relay.py)
                await engine.stream_into(
                    request, push, timeout=timeout, on_log_probs=relay.push_logprobs
                )
            else:
                await engine.stream_into(request, push, timeout=timeout)
        except (EngineFailure, InvalidArgument) as exc:
            raise engine_error(exc) from None

    relay = Relay(read, logprobs=logprobs)
    # Leaving this block (end, stop string, error, the caller gone) cancels the engine request.
    async with relay:
        while (batch := await relay.take()) is not None:
            ids = batch.ids
            end = model.end_at(ids)
            if end is not None:  # the answer ends before its end-of-sequence id (models.py)
                ids = ids[:end]
            t = perf()
            if per_token:
                text, used = _feed_until_stop(detok, stops, ids)
                stopped = stops.stopped
                ids = ids[:used]
            else:
                text, stopped = stops.feed(detok.add(ids))
            detok_s += perf() - t
            completion += len(ids)
            delta = Delta(text, ids, first_at=batch.first_at, last_at=batch.last_at)
            if batch.logprobs is not None:  # one per id kept (a stop string may cut ids)
                delta.logprobs = batch.logprobs[: len(ids)]
            if ids or text:
                yield delta
            if stopped:
                break
            if end is not None:
                ended = True
                await _engine_end(relay)
                break
    tail = ""
    if not stopped:
        tail, stopped = stops.feed(detok.flush())
        if not stopped:
            tail += stops.flush()  # may still confirm a stop (a longer candidate never completed)
            stopped = stops.stopped
    tracing.annotate({"autoglm.detokenize_seconds": round(detok_s, 6)})
    stop = stopped or ended or completion < max_new
    finish = pb.FINISH_REASON_STOP if stop else pb.FINISH_REASON_LENGTH
    yield Delta(tail, [], finish, len(prompt_ids), completion)


async def _engine_end(relay: Relay) -> None:
    """Wait for the engine to end a request that produced an end-of-sequence stop word.

    The engine ends it itself, at once (TensorRT-LLM and the CPU engine stop on a stop word);
    leaving before would reset a stream Triton is completing, which can leak the request
    (reader.py). More ids mean an engine that ignored `stop_words_list`: leaving then cancels
    it. The answer is complete either way, so an engine error after it changes nothing.
    """
    with contextlib.suppress(ServiceError):
        await relay.take()


def engine_error(exc: EngineFailure | InvalidArgument) -> ServiceError:
    """What the caller is told of an engine error: InvalidArgument naming the request field when
    the engine refused one of the caller's values; INTERNAL when it refused a value the façade
    chose itself (our fault); otherwise the error as the engine client mapped it.

    A refusal comes as the text of a stream error (EngineFailure: Triton drops the code on
    ModelStreamInfer unless asked to keep it, refusal.py) or with gRPC INVALID_ARGUMENT (the
    engine client's status mapping); either way its text names the tensor.
    """
    refusal = parse_refusal(exc.message)
    if refusal is None:
        return exc
    return refused_field(refusal) or EngineFailure(exc.message)


def _feed_until_stop(
    detok: IncrementalDetokenizer, stops: StopStringMatcher, ids: list[int]
) -> tuple[str, int]:
    """(text to emit, ids used): feeds one id at a time and stops at the one completing a stop."""
    out: list[str] = []
    for i, token in enumerate(ids):
        text, stopped = stops.feed(detok.add((token,)))
        out.append(text)
        if stopped:
            return "".join(out), i + 1
    return "".join(out), len(ids)
