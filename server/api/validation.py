"""Request validation: a proto request in, a checked plan (generation/plan.py) out, or
InvalidArgument naming fields.

Pure (no I/O): every violation is collected, so the caller learns about all bad fields at once.
"""

from __future__ import annotations

import math
import re
import secrets

from autoglm.server.errors import InvalidArgument
from autoglm.server.generation.images import ImageInput
from autoglm.server.generation.plan import GeneratePlan, PromptInput, Sampling
from autoglm.server.tokenization import Message
from autoglm.triton_models.sampling_bounds import (
    MAX_ABS_PENALTY,
    MIN_REPETITION_PENALTY,
    MIN_REPETITION_PENALTY_F32,
)
from autoglm.v1 import text_generation_pb2 as pb

MAX_PROMPT_BYTES = 1 << 20
MAX_MESSAGES = 256
MAX_STOP_STRINGS = 8
MAX_STOP_BYTES = 128
MAX_TOP_K = 1000
ROLES = frozenset({"system", "user", "assistant"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_ADAPTER_BYTES = 256


def request_id_of(raw: str) -> str:
    """The caller's request id if it is well formed, else a fresh one."""
    return raw if _REQUEST_ID.fullmatch(raw) else secrets.token_hex(8)


def check_request_id(raw: str, errors: list[tuple[str, str]]) -> None:
    if raw and not _REQUEST_ID.fullmatch(raw):
        errors.append(("request_id", "must be 1..64 characters of [A-Za-z0-9._:-]"))


def check_model(name: str, errors: list[tuple[str, str]]) -> None:
    if not name:
        errors.append(("model", "required"))


def check_adapter(name: str, errors: list[tuple[str, str]]) -> None:
    """Only its size: whether it exists (and may be used) is the registry's (calls.py)."""
    if len(name.encode()) > MAX_ADAPTER_BYTES:
        errors.append(("adapter", f"longer than {MAX_ADAPTER_BYTES} bytes"))


def check_prompt_input(
    prompt: str, messages: list[pb.ChatMessage], errors: list[tuple[str, str]]
) -> PromptInput:
    if prompt and messages:
        errors.append(("prompt", "set either prompt or messages, not both"))
    elif not prompt and not messages:
        errors.append(("prompt", "required: a non-empty prompt or at least one message"))
    if len(prompt.encode()) > MAX_PROMPT_BYTES:
        errors.append(("prompt", f"longer than {MAX_PROMPT_BYTES} bytes"))
    if len(messages) > MAX_MESSAGES:
        errors.append(("messages", f"more than {MAX_MESSAGES} messages"))
    total = 0
    checked: list[Message] = []
    images: list[ImageInput] = []
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            errors.append(
                (f"messages[{i}].role", f"must be one of {sorted(ROLES)}, got {m.role!r}")
            )
        message = _message(i, m, images, errors) if m.parts else Message(m.role, m.content)
        total += len(message.content.encode())
        checked.append(message)
    if total > MAX_PROMPT_BYTES:
        errors.append(("messages", f"contents longer than {MAX_PROMPT_BYTES} bytes in all"))
    return PromptInput(prompt=prompt or None, messages=tuple(checked), images=tuple(images))


def _message(
    i: int, m: pb.ChatMessage, images: list[ImageInput], errors: list[tuple[str, str]]
) -> Message:
    """A turn given as parts: its texts joined by newlines (vLLM's "string" content format,
    tokenization.content_with_images), its images appended to `images` in order."""
    where = f"messages[{i}]"
    if m.content:
        errors.append((f"{where}.content", "set either content or parts, not both"))
    texts: list[str] = []
    count = 0
    for j, part in enumerate(m.parts):
        kind = part.WhichOneof("part")
        if kind == "text":
            texts.append(part.text)
        elif kind == "image":
            field = f"{where}.parts[{j}].image"
            if m.role != "user":
                errors.append((field, f"images are accepted in user turns only, not {m.role!r}"))
            elif not part.image.data:
                errors.append((f"{field}.data", "required: the image file's bytes"))
            else:
                images.append(ImageInput(field, part.image.data))
                count += 1
        else:
            errors.append((f"{where}.parts[{j}]", "empty part: set text or image"))
    return Message(m.role, "\n".join(texts), images=count)


def check_sampling(s: pb.SamplingParams, errors: list[tuple[str, str]]) -> Sampling:
    f = "sampling."
    if s.max_tokens < 0:
        errors.append(
            (f + "max_tokens", f"must be >= 0 (0 = the model's default), got {s.max_tokens}")
        )
    # Any temperature in range is servable: below 1e-5 it is greedy (plan.engine_sampling).
    temperature = s.temperature if s.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        errors.append((f + "temperature", f"must be in [0, 2], got {temperature}"))
    top_p = s.top_p if s.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        errors.append((f + "top_p", f"must be in (0, 1], got {top_p}"))
    top_k = s.top_k if s.HasField("top_k") else 0
    if not 0 <= top_k <= MAX_TOP_K:
        errors.append((f + "top_k", f"must be in [0, {MAX_TOP_K}], got {top_k}"))
    # Bounded away from 0: the engine divides logits by it (sampling_bounds.py has the why).
    penalty = s.repetition_penalty if s.HasField("repetition_penalty") else 1.0
    if not (math.isfinite(penalty) and MIN_REPETITION_PENALTY_F32 <= penalty <= 2.0):
        errors.append(
            (f + "repetition_penalty", f"must be in [{MIN_REPETITION_PENALTY}, 2], got {penalty}")
        )
    frequency_penalty = _additive_penalty(s, "frequency_penalty", errors)
    presence_penalty = _additive_penalty(s, "presence_penalty", errors)
    if len(s.stop) > MAX_STOP_STRINGS:
        errors.append((f + "stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(s.stop)}"))
    for i, stop in enumerate(s.stop):
        if not 1 <= len(stop.encode()) <= MAX_STOP_BYTES:
            errors.append((f"{f}stop[{i}]", f"must be 1..{MAX_STOP_BYTES} bytes"))
    # Unset seed: a fresh random one, so the request is still reproducible from the logs.
    seed = s.seed if s.HasField("seed") else secrets.randbits(63)
    return Sampling(
        max_tokens=s.max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        repetition_penalty=penalty,
        stop=tuple(s.stop),
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        logprobs=s.logprobs,
        skip_special_tokens=s.skip_special_tokens if s.HasField("skip_special_tokens") else True,
    )


def _additive_penalty(s: pb.SamplingParams, name: str, errors: list[tuple[str, str]]) -> float:
    """An additive penalty (0 when unset): any finite value is servable, the range is OpenAI's
    and vLLM's [-2, 2] (sampling_bounds.py)."""
    value = getattr(s, name) if s.HasField(name) else 0.0
    if not (math.isfinite(value) and -MAX_ABS_PENALTY <= value <= MAX_ABS_PENALTY):
        bound = f"{MAX_ABS_PENALTY:g}"
        errors.append((f"sampling.{name}", f"must be in [-{bound}, {bound}], got {value}"))
    return float(value)


def validate_generate(req: pb.GenerateRequest) -> GeneratePlan:
    errors: list[tuple[str, str]] = []
    check_request_id(req.request_id, errors)
    check_model(req.model, errors)
    check_adapter(req.adapter, errors)
    prompt_input = check_prompt_input(req.prompt, list(req.messages), errors)
    sampling = check_sampling(req.sampling, errors)
    if errors:
        raise InvalidArgument(errors)
    return GeneratePlan(
        request_id=request_id_of(req.request_id),
        model=req.model,
        input=prompt_input,
        sampling=sampling,
        adapter=req.adapter,
    )


def validate_count_tokens(req: pb.CountTokensRequest) -> PromptInput:
    errors: list[tuple[str, str]] = []
    check_model(req.model, errors)
    prompt_input = check_prompt_input(req.prompt, list(req.messages), errors)
    if errors:
        raise InvalidArgument(errors)
    return prompt_input
