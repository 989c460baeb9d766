"""Plain result types. Callers get frozen dataclasses, never protobuf messages, so that code
using the client does not depend on the generated stubs (and cannot mutate shared results)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Completion", "Delta", "ModelInfo", "TokenCount"]


@dataclass(frozen=True)
class Completion:
    """A whole completion (Generate).

    finish_reason: "stop" (end of sequence or a stop string), "length" (max_tokens reached),
    "cancelled", or "unspecified" if the server did not say.
    token_ids include the ids of text cut by a stop string (see the proto).
    trace_id: the OpenTelemetry trace id (32 hex digits) the server recorded the request under,
    from its `x-trace-id` trailer; '' when the server does not trace. Quote it to find the trace.
    logprobs: with `logprobs=True`, the log-probability of each of `token_ids`, in order (see
    the proto's SamplingParams.logprobs); () otherwise.
    model_version: the version of the model that answered, from the server's
    `x-autoglm-model-version` trailer: while a canary release runs, some callers are answered
    by the canary's version (docs/build.md, "Canary releases"). None when the server does not
    say (a model not served from a model repository) or sends a value that is not a version.
    """

    request_id: str
    model: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    trace_id: str = ""
    logprobs: tuple[float, ...] = ()
    model_version: int | None = None


@dataclass(frozen=True)
class Delta:
    """One streamed piece (GenerateStream): the new text and the token ids that produced it.

    `text` may be empty while the server holds back an incomplete UTF-8 character or a possible
    stop string. `finish_reason`, the usage counts, `trace_id` and `model_version` (see
    `Completion`) are set on the last delta only. `logprobs`: as in `Completion`, one per id of
    this delta's `token_ids`.
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    trace_id: str = ""
    logprobs: tuple[float, ...] = ()
    model_version: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A model the server can generate with (ListModels)."""

    name: str
    engine: str
    max_context_tokens: int
    max_output_tokens: int
    default_max_tokens: int
    has_chat_template: bool
    max_images: int = 0  # images one request may carry; 0 = a text-only model
    max_image_bytes: int = 0
    max_prompt_tokens: int = 0  # longest prompt (0 from a server that does not say)
    adapters: tuple[str, ...] = ()  # its LoRA adapters this caller may use (generate(adapter=))


@dataclass(frozen=True)
class TokenCount:
    """The prompt tokens a request would use (CountTokens)."""

    model: str
    prompt_tokens: int
    token_ids: tuple[int, ...]
