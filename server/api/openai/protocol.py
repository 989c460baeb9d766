"""The OpenAI API's request bodies, checked with pydantic and turned into autoglm.v1 requests.

Pure (no I/O). Shape checks happen here (types, OpenAI-only fields such as `n` or
`top_logprobs`, content parts, keys we cannot honour); value checks happen once for both front
doors: the request becomes a `pb.GenerateRequest` and goes through the gRPC API's
`validate_generate`, so ranges, byte limits and stop-string rules cannot drift apart. Field
names in errors are the caller's own (`max_tokens`, `messages[1].content[0]`), see
`param_name`.

Unknown keys are refused with a 400 naming them, unless they are known to leave the output
unchanged (`user`, `metadata`, `store`, …): a client sending `extra_body` for a feature this
server lacks learns it at once instead of getting a silently different answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from autoglm.server.api.openai.data_urls import decode_data_url
from autoglm.server.errors import InvalidArgument
from autoglm.server.vision import MAX_IMAGE_BYTES_SETTING
from autoglm.v1 import text_generation_pb2 as pb

# Decoding bound of one data URL: the largest `max_image_bytes` setting; the configured limit
# (ImageLimits, settings) is checked after, with the other image checks.
MAX_IMAGE_BYTES = MAX_IMAGE_BYTES_SETTING
_PART = re.compile(r"(messages\[\d+\])\.parts\[(\d+)\](?:\.image(?:\.data)?)?")

# Keys OpenAI clients send that change nothing in the output of this server: accepted, unused.
_INERT_KEYS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})

_Number = StrictFloat | StrictInt


class _Body(BaseModel):
    # Unknown keys are kept, to be refused by name with a message of ours (_extra_keys).
    model_config = ConfigDict(extra="allow", frozen=True)


class _Part(BaseModel):
    # Inside a body, an unknown key is refused by pydantic itself, naming its path.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamOptions(_Part):
    include_usage: StrictBool = False


class ImageUrl(_Part):
    url: StrictStr
    detail: StrictStr | None = None


class TextPart(_Part):
    type: Literal["text"]
    text: StrictStr


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Body):
    role: StrictStr
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None


class _Sampling(_Body):
    """Fields both routes share."""

    model: StrictStr
    max_tokens: StrictInt | None = None
    temperature: _Number | None = None
    top_p: _Number | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: _Number | None = None
    presence_penalty: _Number | None = None
    # Extras (vLLM's names): sampling the OpenAI API does not have.
    top_k: StrictInt | None = None
    repetition_penalty: _Number | None = None
    # vLLM's extra, default True; older Open-AutoGLM clients send False to keep their tags.
    skip_special_tokens: StrictBool = True
    user: StrictStr | None = None
    logit_bias: dict[str, Any] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr]
    logprobs: StrictInt | None = None  # the legacy API: how many top alternatives per token
    echo: StrictBool = False
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None


def parse(model: type[BaseModel], body: bytes) -> Any:
    """The request body as `model`, or InvalidArgument naming each bad field."""
    try:
        return model.model_validate_json(body)
    except PydanticValidationError as exc:
        raise InvalidArgument(_violations(exc)) from None


def _violations(exc: PydanticValidationError) -> list[tuple[str, str]]:
    """pydantic's errors as (field path, description), one per field.

    A value that fits no member of a union (`content`: a string or a list of parts) gets one
    error per member; only the members that got furthest into the value are kept, and errors
    left at the same place are joined."""
    out: list[tuple[str, str]] = []
    unions: dict[str, list[tuple[int, str, str]]] = {}
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        path = _path(_clean(loc)) or "body"
        kind = err["type"]
        if kind == "json_invalid":
            message = "is not valid JSON"
        elif kind == "missing":
            message = "required"
        elif kind == "extra_forbidden":
            message = "unsupported field"
        elif kind == "union_tag_invalid":
            path += ".type"
            message = _part_type_message(err)
        else:
            message = str(err["msg"])
        marker = next((i for i, p in enumerate(loc) if _is_member(p)), None)
        if marker is None:
            out.append((path, message))
        else:
            root = _path(_clean(loc[:marker]))
            unions.setdefault(root, []).append((len(loc), path, message))
    for items in unions.values():
        deepest = max(depth for depth, _, _ in items)
        joined: dict[str, list[str]] = {}
        for depth, path, message in items:
            if depth == deepest and message not in joined.setdefault(path, []):
                joined[path].append(message)
        out.extend((path, " or ".join(messages)) for path, messages in joined.items() if messages)
    return out


_TAGS = frozenset({"text", "image_url"})


def _is_member(p: object) -> bool:
    """A union member in pydantic's error location: 'str', 'int', 'list[...]', …"""
    return isinstance(p, str) and (
        p in ("str", "int", "float", "bool", "none") or "[" in p or p.startswith("function-")
    )


def _clean(loc: list[Any]) -> list[Any]:
    """The location without union members and content-part tags (`content[0].text.text` is the
    `text` field of the part at content[0])."""
    kept = [p for p in loc if not _is_member(p)]
    out: list[Any] = []
    for i, p in enumerate(kept):
        if p in _TAGS and i and isinstance(kept[i - 1], int) and i + 1 < len(kept):
            continue
        out.append(p)
    return out


def _part_type_message(err: Any) -> str:
    got = (err.get("ctx") or {}).get("tag", "?")
    return f"unsupported content part type {got!r}; this server accepts 'text' and 'image_url'"


def _path(loc: list[Any]) -> str:
    path = ""
    for p in loc:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else str(p))
    return path


def param_name(field: str, *, prompt_field: str) -> str:
    """The caller's name of a plan field: `sampling.max_tokens` → `max_tokens`; `prompt` →
    `messages` on the chat route."""
    if field.startswith("sampling."):
        return field.removeprefix("sampling.")
    if field == "prompt":
        return prompt_field
    if field == "adapter":  # named in `model` on this door (model_names.py)
        return "model"
    # An image part: autoglm.v1's `messages[i].parts[j].image` is the caller's `content[j]`.
    return _PART.sub(r"\1.content[\2]", field)


def _extra_keys(req: _Body, errors: list[tuple[str, str]]) -> None:
    for key in sorted(req.model_extra or {}):
        if key not in _INERT_KEYS:
            errors.append((key, "unsupported parameter: this server cannot honour it"))


# The autoglm.v1 fields these integers land in: a JSON integer beyond them is the caller's
# error (400 naming the field), not protobuf's ValueError.
_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1


def _in_range(
    name: str, value: int | None, low: int, high: int, errors: list[tuple[str, str]]
) -> bool:
    if value is None or low <= value <= high:
        return True
    errors.append((name, f"must be in [{low}, {high}], got {value}"))
    return False


def _sampling(
    req: _Sampling,
    max_tokens: int | None,
    errors: list[tuple[str, str]],
    max_tokens_field: str = "max_tokens",
) -> Any:
    if req.n != 1:
        errors.append(("n", f"must be 1 (one choice per request), got {req.n}"))
    if req.logit_bias:
        errors.append(("logit_bias", "not supported by this server"))
    seed_ok = _in_range("seed", req.seed, 0, _UINT64_MAX, errors)
    tokens_ok = _in_range(max_tokens_field, max_tokens, 1, _INT32_MAX, errors)
    top_k_ok = _in_range("top_k", req.top_k, -_INT32_MAX - 1, _INT32_MAX, errors)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    s = pb.SamplingParams(
        max_tokens=max_tokens if tokens_ok and max_tokens else 0,
        stop=stop,
        skip_special_tokens=req.skip_special_tokens,
    )
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = getattr(req, name)
        if value is not None:
            setattr(s, name, value)
    if req.top_k is not None and top_k_ok:
        s.top_k = req.top_k
    if req.seed is not None and seed_ok:
        s.seed = req.seed
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(req, name)
        if value is not None:
            setattr(s, name, float(value))
    return s


def chat_request(req: ChatCompletionRequest) -> pb.GenerateRequest:
    """The autoglm.v1 request a chat completion asks for (InvalidArgument for what it can't)."""
    errors: list[tuple[str, str]] = []
    _extra_keys(req, errors)
    max_tokens, max_tokens_field = req.max_tokens, "max_tokens"
    if req.max_completion_tokens is not None:
        max_tokens_field = "max_completion_tokens"
        if req.max_tokens is not None and req.max_tokens != req.max_completion_tokens:
            errors.append(("max_tokens", "differs from max_completion_tokens; give one of them"))
        max_tokens = req.max_completion_tokens
    if req.top_logprobs:
        errors.append(
            (
                "top_logprobs",
                "not supported: the engine returns the chosen tokens' log-probabilities only"
                " (use logprobs: true, top_logprobs: 0)",
            )
        )
    if req.tools or (req.tool_choice not in (None, "none")):
        errors.append(("tools", "tool calling is not supported by this server"))
    if req.response_format is not None and req.response_format.get("type") != "text":
        errors.append(("response_format", "only {'type': 'text'} is supported"))
    sampling = _sampling(req, max_tokens, errors, max_tokens_field)
    sampling.logprobs = req.logprobs
    if not req.messages:
        errors.append(("messages", "required: at least one message"))
    messages = [_message(i, m, errors) for i, m in enumerate(req.messages)]
    if errors:
        raise InvalidArgument(errors)
    return pb.GenerateRequest(model=req.model, messages=messages, sampling=sampling)


def _message(i: int, m: ChatMessage, errors: list[tuple[str, str]]) -> pb.ChatMessage:
    where = f"messages[{i}]"
    _extra_keys_at(where, m, errors)
    # "developer" is OpenAI's newer name for the system role (o-series models onwards).
    role = "system" if m.role == "developer" else m.role
    if m.name is not None:
        errors.append((f"{where}.name", "not supported: the chat template has no names"))
    if isinstance(m.content, str):
        return pb.ChatMessage(role=role, content=m.content)
    if m.content is None:
        errors.append((f"{where}.content", "required"))
        return pb.ChatMessage(role=role)
    # One autoglm.v1 part per OpenAI part, in order, so that `parts[j]` names `content[j]`
    # (param_name); the texts are joined by newlines further on (vLLM's "string" format).
    parts = []
    for j, part in enumerate(m.content):
        if isinstance(part, ImagePart):
            field = f"{where}.content[{j}]"
            _extra_keys_at(field, part, errors)
            _extra_keys_at(f"{field}.image_url", part.image_url, errors)
            if part.image_url.detail not in (None, "auto"):
                errors.append(
                    (f"{field}.image_url.detail", "only 'auto': images are sized by the model")
                )
            try:
                mime, data = decode_data_url(
                    part.image_url.url, f"{field}.image_url.url", max_bytes=MAX_IMAGE_BYTES
                )
            except InvalidArgument as exc:
                errors.extend(exc.violations)
                continue
            parts.append(pb.ContentPart(image=pb.Image(data=data, mime_type=mime)))
        else:
            parts.append(pb.ContentPart(text=part.text))
    return pb.ChatMessage(role=role, parts=parts)


def _extra_keys_at(where: str, req: _Body, errors: list[tuple[str, str]]) -> None:
    for key in sorted(req.model_extra or {}):
        errors.append((f"{where}.{key}", "unsupported field"))


def completion_request(req: CompletionRequest) -> pb.GenerateRequest:
    errors: list[tuple[str, str]] = []
    _extra_keys(req, errors)
    if req.logprobs:
        errors.append(
            (
                "logprobs",
                "must be 0 or null: the engine returns the chosen tokens' log-probabilities"
                " only, no alternatives",
            )
        )
    if req.echo:
        errors.append(("echo", "not supported"))
    if req.best_of not in (None, 1):
        errors.append(("best_of", f"must be 1, got {req.best_of}"))
    if req.suffix:
        errors.append(("suffix", "not supported"))
    sampling = _sampling(req, req.max_tokens, errors)
    sampling.logprobs = req.logprobs is not None
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            errors.append(("prompt", f"give one prompt per request, got {len(prompt)}"))
        prompt = prompt[0] if prompt else ""
    if errors:
        raise InvalidArgument(errors)
    return pb.GenerateRequest(model=req.model, prompt=prompt, sampling=sampling)


def renamer(prompt_field: str) -> Callable[[str], str]:
    return lambda field: param_name(field, prompt_field=prompt_field)
