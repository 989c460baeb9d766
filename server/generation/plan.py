"""A checked generation request and the rules that turn it into engine values.

Pure (no I/O). The API layers (gRPC validation, the HTTP front door) build a `GeneratePlan`;
the pipeline resolves its output budget once (`resolve_max_tokens`) and maps its sampling onto
the engine's tensors (`engine_sampling`). The engine mapping follows TensorRT-LLM's sampling
semantics: greedy is `runtime_top_k = 1` (its documented way to get argmax), never
temperature 0. An engine's refusal of one of those tensors maps back onto the request field it
came from (`refused_field`).
"""

from __future__ import annotations

from dataclasses import dataclass

from autoglm.server.engine.client import EngineSampling
from autoglm.server.errors import InvalidArgument
from autoglm.server.generation.images import ImageInput
from autoglm.server.tokenization import Message
from autoglm.triton_models import contract
from autoglm.triton_models.refusal import Refusal
from autoglm.triton_models.sampling_bounds import GREEDY_TEMPERATURE_BELOW


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int  # 0 = the model's default, resolved once the prompt length is known
    temperature: float
    top_p: float
    top_k: int
    seed: int
    repetition_penalty: float
    stop: tuple[str, ...]
    # Additive, with TensorRT-LLM's semantics: prompt tokens count (cpu_engine/sampling.py).
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool = False  # return the chosen tokens' log-probabilities (Delta.logprobs)
    skip_special_tokens: bool = True  # detokenize without special tokens (as vLLM's default)


@dataclass(frozen=True, slots=True)
class PromptInput:
    prompt: str | None
    messages: tuple[Message, ...]
    # The messages' images in order (Message.images says how many each turn has); checked
    # against the model's rules once the model is known (generation/images.py).
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True, slots=True)
class GeneratePlan:
    request_id: str
    model: str
    input: PromptInput
    sampling: Sampling
    adapter: str = ""  # a LoRA adapter of `model` (GenerateRequest.adapter); "" = none


def check_max_output(requested: int, max_output: int) -> None:
    """InvalidArgument when max_tokens exceeds what the model allows (before any admission)."""
    if requested > max_output:
        raise InvalidArgument(
            [("sampling.max_tokens", f"must be <= {max_output}, got {requested}")]
        )


def resolve_max_tokens(
    requested: int,
    *,
    prompt_tokens: int,
    max_context: int,
    max_output: int,
    default: int,
    max_input: int | None = None,
) -> int:
    """The number of tokens to ask the engine for, or InvalidArgument when it cannot fit.

    `max_input` is the engine's own prompt limit when it is below the context (a TensorRT-LLM
    engine's `max_input_len`, which it enforces by failing the request: model_limits.py); a
    prompt over it is the caller's error here, never the engine's.
    """
    if max_input is not None and max_input < max_context and prompt_tokens > max_input:
        raise InvalidArgument(
            [
                (
                    "prompt",
                    f"{prompt_tokens} prompt tokens exceed the {max_input}-token prompt limit"
                    " of the model's engine",
                )
            ]
        )
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
    extra = (s.frequency_penalty, s.presence_penalty, s.logprobs)
    # A temperature below 1e-5 is greedy, as in vLLM (sampling_bounds.py): the engine would
    # divide the logits by it, and 1e-45 (a float32 denormal) makes every one of them inf.
    if s.temperature < GREEDY_TEMPERATURE_BELOW or s.top_k == 1:
        # Greedy: TensorRT-LLM takes the argmax with top_k = 1; temperature 1 leaves the
        # logits, hence the penalties and the log-probabilities, unscaled.
        return EngineSampling(1.0, 1, 1.0, s.seed, s.repetition_penalty, *extra)
    return EngineSampling(s.temperature, s.top_k, s.top_p, s.seed, s.repetition_penalty, *extra)


# The request field each engine tensor carries a caller's value of (engine_sampling,
# EngineRequest). The others (end_id, pad_id, streaming, …) hold the façade's own values: an
# engine refusing one of those is the façade's fault, not the caller's.
_FIELD_OF_TENSOR = {
    contract.INPUT_IDS.name: "prompt",
    contract.INPUT_LENGTHS.name: "prompt",
    contract.REQUEST_OUTPUT_LEN.name: "sampling.max_tokens",
    contract.TEMPERATURE.name: "sampling.temperature",
    contract.RUNTIME_TOP_K.name: "sampling.top_k",
    contract.RUNTIME_TOP_P.name: "sampling.top_p",
    contract.SEED.name: "sampling.seed",
    contract.REPETITION_PENALTY.name: "sampling.repetition_penalty",
    contract.STOP_WORDS_LIST.name: "sampling.stop",
    contract.FREQUENCY_PENALTY.name: "sampling.frequency_penalty",
    contract.PRESENCE_PENALTY.name: "sampling.presence_penalty",
    contract.RETURN_LOG_PROBS.name: "sampling.logprobs",
}


def refused_field(refusal: Refusal) -> InvalidArgument | None:
    """The caller's error for an engine's refusal of a tensor, naming the request field (and the
    tensor); None when the tensor carries no value of the caller's."""
    field = _FIELD_OF_TENSOR.get(refusal.tensor)
    if field is None:
        return None
    return InvalidArgument([(field, f"the engine refused it ({refusal})")])
