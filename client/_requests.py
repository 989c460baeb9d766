"""Request building, response conversion and default-model choice, shared by both clients.

Pure functions with no I/O: the sync and async clients differ only in how they make the call,
so everything else lives here once and is tested without a server.

Validation is limited to what the contract states unconditionally (exactly one of prompt and
messages; well-formed messages). Ranges (temperature, top_k, stop count, request_id alphabet,
roles) are left to the server, which knows the model's limits and answers with BadRequest
field violations; checking them here too would let the two drift apart.
"""

from __future__ import annotations

import mimetypes
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from autoglm.client._exceptions import ConfigError, InvalidArgumentError
from autoglm.client._types import Completion, Delta, ModelInfo, TokenCount
from autoglm.v1 import text_generation_pb2 as pb

__all__ = [
    "MessageLike",
    "Sampling",
    "build_count_tokens_request",
    "build_generate_request",
    "completion_from_response",
    "delta_from_response",
    "model_info_from_proto",
    "new_request_id",
    "only_model",
    "token_count_from_response",
]


@dataclass(frozen=True)
class Image:
    """An image part of a chat turn: the file's bytes (PNG, JPEG or WebP; the server reads the
    type from the bytes). Inline only: the server never fetches URLs or reads files."""

    data: bytes
    mime_type: str = ""

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Image:
        """Read an image file here, on the client (the server never reads paths)."""
        data = Path(path).read_bytes()
        return cls(data, mimetypes.guess_type(str(path))[0] or "")


Content = str | Sequence[str | Image]
MessageLike = Mapping[str, Content] | tuple[str, Content]
"""A chat turn: {"role": ..., "content": ...} or (role, content); content is text, or a list of
texts and `Image`s (for a model that accepts images: ModelInfo.max_images > 0)."""

_FINISH_REASONS: Mapping[int, str] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CANCELLED: "cancelled",
}


def _invalid(field: str, description: str) -> InvalidArgumentError:
    """The same error shape the server uses, raised before any RPC is made."""
    return InvalidArgumentError(
        f"{field}: {description}",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        field_violations=[(field, description)],
    )


@dataclass(frozen=True)
class Sampling:
    """Sampling options as the caller gave them; None = leave unset (the server's default)."""

    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: Sequence[str] | str = ()
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool = False  # return each generated token's log-probability

    def to_proto(self) -> pb.SamplingParams:
        params = pb.SamplingParams()
        # A lone string is one stop string, not a sequence of one-character stop strings.
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        values = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "logprobs": self.logprobs or None,  # false is the proto's default: left unset
        }
        for name, value in values.items():
            if value is None:
                continue  # optional field left unset: the server applies its default
            try:
                setattr(params, name, value)
            except (TypeError, ValueError) as exc:  # wrong type or out of the proto's range
                raise _invalid(f"sampling.{name}", str(exc)) from None
        for i, item in enumerate(stop):
            if not isinstance(item, str):
                raise _invalid(f"sampling.stop[{i}]", "must be a string")
        params.stop.extend(stop)
        return params


def _chat_message(index: int, message: object) -> pb.ChatMessage:
    field = f"messages[{index}]"
    if isinstance(message, Mapping):
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise _invalid(field, f"missing {' and '.join(missing)}")
        role, content = message["role"], message["content"]
    elif isinstance(message, tuple | list) and len(message) == 2:
        role, content = message
    else:
        raise _invalid(field, 'must be {"role": ..., "content": ...} or (role, content)')
    if not isinstance(role, str):
        raise _invalid(field, "role must be a string")
    if isinstance(content, str):
        return pb.ChatMessage(role=role, content=content)
    if not isinstance(content, Sequence):
        raise _invalid(field, "content must be a string or a list of strings and Images")
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            parts.append(pb.ContentPart(text=part))
        elif isinstance(part, Image):
            image = pb.Image(data=part.data, mime_type=part.mime_type)
            parts.append(pb.ContentPart(image=image))
        else:
            raise _invalid(f"{field}.parts[{j}]", "must be a string or an Image")
    return pb.ChatMessage(role=role, parts=parts)


def _prompt_fields(
    prompt: str | None, messages: Iterable[MessageLike] | None
) -> tuple[str, list[pb.ChatMessage]]:
    """(prompt, messages) for a request: exactly one of them, as the contract demands."""
    chat = [_chat_message(i, m) for i, m in enumerate(messages)] if messages is not None else []
    if prompt is not None and not isinstance(prompt, str):
        raise _invalid("prompt", "must be a string")
    if prompt and chat:
        raise _invalid("prompt", "give either prompt or messages, not both")
    if not prompt and not chat:
        raise _invalid("prompt", "give a non-empty prompt or at least one message")
    return prompt or "", chat


def build_generate_request(
    prompt: str | None,
    *,
    messages: Iterable[MessageLike] | None,
    sampling: Sampling,
    model: str = "",
    request_id: str | None = None,
    adapter: str = "",
) -> pb.GenerateRequest:
    """A GenerateRequest; `sampling` is left unset entirely when every option is a default;
    `adapter` a LoRA adapter of the model (ModelInfo.adapters), "" for the base model."""
    text, chat = _prompt_fields(prompt, messages)
    request = pb.GenerateRequest(model=model, prompt=text, messages=chat, adapter=adapter)
    params = sampling.to_proto()
    if params.ByteSize():
        request.sampling.CopyFrom(params)
    if request_id:
        request.request_id = request_id
    return request


def new_request_id() -> str:
    """A request id for a call whose caller gave none, made once per call so that every retry
    of it carries the same id (server logs and audit records then show one request). Same shape
    as the ids the server makes up (server/api/validation.py: 16 hex characters)."""
    return secrets.token_hex(8)


def build_count_tokens_request(
    prompt: str | None, *, messages: Iterable[MessageLike] | None, model: str = ""
) -> pb.CountTokensRequest:
    text, chat = _prompt_fields(prompt, messages)
    return pb.CountTokensRequest(model=model, prompt=text, messages=chat)


def only_model(models: Sequence[ModelInfo]) -> str:
    """The default model when none was configured: the server's only one, else an error."""
    if len(models) == 1:
        return models[0].name
    if not models:
        raise ConfigError("no model given and the server lists no models")
    names = ", ".join(m.name for m in models)
    raise ConfigError(
        f"no model given and the server has {len(models)} ({names}): "
        "pass model=..., --model, or set AUTOGLM_MODEL"
    )


def _finish_reason(value: int) -> str | None:
    if value == pb.FINISH_REASON_UNSPECIFIED:
        return None
    return _FINISH_REASONS.get(value, "unspecified")  # a newer server's reason we don't know


def completion_from_response(
    response: pb.GenerateResponse, trace_id: str = "", model_version: int | None = None
) -> Completion:
    return Completion(
        request_id=response.request_id,
        model=response.model,
        text=response.text,
        token_ids=tuple(response.token_ids),
        finish_reason=_finish_reason(response.finish_reason) or "unspecified",
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        trace_id=trace_id,
        logprobs=tuple(response.logprobs),
        model_version=model_version,
    )


def delta_from_response(response: pb.GenerateResponse) -> Delta:
    has_usage = response.HasField("usage")
    return Delta(
        request_id=response.request_id,
        text=response.text,
        token_ids=tuple(response.token_ids),
        finish_reason=_finish_reason(response.finish_reason),
        prompt_tokens=response.usage.prompt_tokens if has_usage else None,
        completion_tokens=response.usage.completion_tokens if has_usage else None,
        logprobs=tuple(response.logprobs),
    )


def model_info_from_proto(model: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        engine=model.engine,
        max_context_tokens=model.max_context_tokens,
        max_output_tokens=model.max_output_tokens,
        default_max_tokens=model.default_max_tokens,
        has_chat_template=model.has_chat_template,
        max_images=model.max_images,
        max_image_bytes=model.max_image_bytes,
        max_prompt_tokens=model.max_prompt_tokens,
        adapters=tuple(model.adapters),
    )


def token_count_from_response(response: pb.CountTokensResponse) -> TokenCount:
    return TokenCount(
        model=response.model,
        prompt_tokens=response.prompt_tokens,
        token_ids=tuple(response.token_ids),
    )
