"""A checked generation request and the rules that turn it into engine values.

Pure (no I/O). The API layers (gRPC validation, the HTTP front door) build a `GeneratePlan`;
the pipeline resolves its output budget once (`resolve_max_tokens`) and maps its sampling onto
the engine's tensors (`engine_sampling`). The engine mapping follows TensorRT-LLM's sampling
semantics: greedy is `runtime_top_k = 1` (its documented way to get argmax), never
temperature 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoglm.server.engine.client import EngineSampling
from autoglm.server.errors import InvalidArgument
from autoglm.server.tokenization import Message


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int  # 0 = the model's default, resolved once the prompt length is known
    temperature: float
    top_p: float
    top_k: int
    seed: int
    repetition_penalty: float
    stop: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PromptInput:
    prompt: str | None
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class GeneratePlan:
    request_id: str
    model: str
    input: PromptInput
    sampling: Sampling


def check_max_output(requested: int, max_output: int) -> None:
    """InvalidArgument when max_tokens exceeds what the model allows (before any admission)."""
    if requested > max_output:
        raise InvalidArgument(
            [("sampling.max_tokens", f"must be <= {max_output}, got {requested}")]
        )


def resolve_max_tokens(
    requested: int, *, prompt_tokens: int, max_context: int, max_output: int, default: int
) -> int:
    """The number of tokens to ask the engine for, or InvalidArgument when it cannot fit."""
    room = max_context - prompt_tokens
    if room < 1:
        raise InvalidArgument(
            [
                (
                    "prompt",
                    f"{prompt_tokens} prompt tokens leave no room"
                    f" in the {max_context}-token context",
                )
            ]
        )
    if requested == 0:
        return min(default, max_output, room)
    check_max_output(requested, max_output)
    if requested > room:
        raise InvalidArgument(
            [
                (
                    "sampling.max_tokens",
                    f"{requested} + {prompt_tokens} prompt tokens exceed"
                    f" the {max_context}-token context",
                )
            ]
        )
    return requested


def engine_sampling(s: Sampling) -> EngineSampling:
    if s.temperature == 0.0 or s.top_k == 1:
        # Greedy: TensorRT-LLM takes the argmax with top_k = 1; temperature is then irrelevant.
        return EngineSampling(1.0, 1, 1.0, s.seed, s.repetition_penalty)
    return EngineSampling(s.temperature, s.top_k, s.top_p, s.seed, s.repetition_penalty)
