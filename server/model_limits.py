"""A model's token limits and end-of-sequence ids, from what its files and its engine state.

Pure: the inputs are the parsed json of the model folder and the engine's build limits;
`models.load_model` reads the files. The rules, and why:

- **Context** (prompt + completion): the smallest of what the model states, as vLLM derives
  `max_model_len` (vllm-project/vllm `vllm/config/model.py` `_get_and_verify_max_len`, commit
  0052a5b8: the smallest of the keys below; for a multimodal config the text model's, as its
  `get_hf_text_config` reads `text_config`). GLM-4.1V (`Glm4vConfig`) keeps them under
  `text_config`; ChatGLM states `seq_length`. Also generation_config.json's `max_length` (the
  length of prompt + generated tokens, per transformers' GenerationConfig) and the engine's
  `max_seq_len` (TensorRT-LLM cuts `request_output_len` to fit it, with only a warning:
  `LlmRequest::validate`, cpp/tensorrt_llm/batch_manager/llmRequest.cpp, commit 119c6e60).
  RoPE scaling is not applied (vLLM multiplies by the factor): a stated length is never
  exceeded, at the price of not serving a context stretched only in `rope_scaling`.
- **Prompt**: the engine's `max_input_len` when it has one, since TensorRT-LLM refuses a longer
  prompt outright ("Prompt length (%d) exceeds maximum input length (%d)", same function);
  otherwise only the context bounds it.
- **Output**: nothing in an HF folder states a hard output limit, so the cap is a policy,
  DEFAULT_MAX_OUTPUT, within the room the context leaves. generation_config.json's
  `max_new_tokens` is a default for a request that does not say (as vLLM takes it,
  `get_diff_sampling_param`), not a cap.
- **Overrides** (ModelSpec, from the operator) may lower a limit; above the model's own one they
  are refused at start (as vLLM refuses a `--max-model-len` above the derived length).
- **End of sequence**: every id of generation_config.json's then config.json's `eos_token_id`
  (int or list; text_config's for a multimodal config), in that order, each once. Llama-3.1
  Instruct lists [128001, 128008, 128009] and ends its turns with 128009, not the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# config.json keys that state the longest sequence a model takes (vLLM's list, less Whisper's
# `max_target_positions`, a decoder-only length of an encoder-decoder).
CONTEXT_KEYS = (
    "max_position_embeddings",  # Llama, SmolLM2, GLM-4.1V's text_config
    "n_positions",  # GPT-2
    "max_seq_len",  # MPT
    "seq_length",  # ChatGLM
    "model_max_length",  # Command-R
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)

# The output cap when nothing lowers it. 4096 because: the Open-AutoGLM agent asks for 3000
# tokens per step (issue #22); it equals the façade's default per-request ceiling
# (`max_tokens_per_request`, docs/security.md), so the model and admission agree by default;
# and it bounds how long one request holds an engine slot whatever the context (a 128k model
# would otherwise accept max_tokens 128k). An operator may raise it up to the context.
DEFAULT_MAX_OUTPUT = 4096
# max_tokens of a request that leaves it 0, unless generation_config.json says otherwise.
DEFAULT_MAX_TOKENS = 256


class LimitError(ValueError):
    """A model's limits cannot be resolved (nothing states them, or an override is too high)."""


@dataclass(frozen=True, slots=True)
class Stated:
    """One limit as a source states it: the value and where it comes from (for messages)."""

    value: int
    source: str  # e.g. "config.json text_config.max_position_embeddings"


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """What an engine was built for (build_engine/manifest.py Profile)."""

    max_input_len: int
    max_seq_len: int
    source: str = "engine manifest"


@dataclass(frozen=True, slots=True)
class Overrides:
    """The operator's limits (ModelSpec); None = the model's own."""

    max_context_tokens: int | None = None
    max_output_tokens: int | None = None
    default_max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """The limits a model is served with, resolved once at start."""

    max_context: int  # prompt + completion
    max_input: int  # prompt alone (<= max_context)
    max_output: int  # largest max_tokens (< max_context)
    default_max_tokens: int  # max_tokens of a request that leaves it 0 (<= max_output)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sections(config: Mapping[str, object]) -> list[tuple[str, Mapping[str, object]]]:
    """The config itself, then its text model's part when it has one (multimodal configs)."""
    sections: list[tuple[str, Mapping[str, object]]] = [("", config)]
    text = config.get("text_config")
    if isinstance(text, Mapping):
        sections.append(("text_config.", text))
    return sections


def stated_context(
    config: Mapping[str, object],
    generation_config: Mapping[str, object] | None,
    engine: EngineLimits | None,
) -> list[Stated]:
    """Every statement of the context length found (LimitError for a malformed one)."""
    found: list[Stated] = []
    for prefix, section in _sections(config):
        for key in CONTEXT_KEYS:
            if section.get(key) is not None:
                found.append(_positive(section[key], f"config.json {prefix}{key}"))
    if generation_config and generation_config.get("max_length") is not None:
        found.append(
            _positive(generation_config["max_length"], "generation_config.json max_length")
        )
    if engine is not None:
        found.append(_positive(engine.max_seq_len, f"{engine.source} max_seq_len"))
    return found


def stated_default_max_tokens(generation_config: Mapping[str, object] | None) -> Stated | None:
    if not generation_config or generation_config.get("max_new_tokens") is None:
        return None
    return _positive(generation_config["max_new_tokens"], "generation_config.json max_new_tokens")


def _positive(value: object, source: str) -> Stated:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise LimitError(f"{source}: {value!r} is not a length (an integer >= 1)")
    return Stated(int(value), source)  # type: ignore[call-overload]


def resolve_limits(
    context: Sequence[Stated],
    *,
    engine: EngineLimits | None = None,
    default_max_tokens: Stated | None = None,
    overrides: Overrides = Overrides(),
) -> ModelLimits:
    """The tighter bound wins; an override may lower a limit, never raise it (LimitError)."""
    if not context and overrides.max_context_tokens is None:
        raise LimitError(
            "max_context_tokens: the model states no context length (none of "
            f"{', '.join(CONTEXT_KEYS)} in config.json or its text_config, no max_length in "
            "generation_config.json, no engine manifest); set it explicitly"
        )
    own = min(context, key=lambda s: s.value) if context else None
    max_context = _override("max_context_tokens", overrides.max_context_tokens, own, lowest=2)
    # A prompt needs one token and leaves room for one.
    room = Stated(max_context - 1, f"the {max_context}-token context less one prompt token")
    max_output = _override(
        "max_output_tokens",
        overrides.max_output_tokens,
        room,
        default=min(DEFAULT_MAX_OUTPUT, room.value),
    )
    max_input = max_context
    if engine is not None:
        stated = _positive(engine.max_input_len, f"{engine.source} max_input_len")
        max_input = min(max_context, stated.value)
    stated_default = default_max_tokens.value if default_max_tokens else DEFAULT_MAX_TOKENS
    default = _override(
        "default_max_tokens",
        overrides.default_max_tokens,
        Stated(max_output, "max_output_tokens"),
        default=min(stated_default, max_output),
    )
    return ModelLimits(max_context, max_input, max_output, default)


def _override(
    name: str,
    value: int | None,
    ceiling: Stated | None,
    *,
    default: int | None = None,
    lowest: int = 1,
) -> int:
    """`value` checked against `ceiling`; without a value, `default` (else the ceiling)."""
    if value is None:
        assert ceiling is not None
        return ceiling.value if default is None else default
    if not _is_int(value) or value < lowest:
        raise LimitError(f"{name}: {value!r} must be an integer >= {lowest}")
    if ceiling is not None and value > ceiling.value:
        raise LimitError(f"{name}: {value} is above {ceiling.value}, the limit of {ceiling.source}")
    return value


def end_of_sequence_ids(
    config: Mapping[str, object], generation_config: Mapping[str, object] | None
) -> tuple[int, ...]:
    """Every end-of-sequence id, generation_config.json's first, in order, each once.

    LimitError when there is none or one is not a token id.
    """
    sources: list[tuple[str, object]] = []
    if generation_config:
        sources.append(
            ("generation_config.json eos_token_id", generation_config.get("eos_token_id"))
        )
    for prefix, section in _sections(config):
        sources.append((f"config.json {prefix}eos_token_id", section.get("eos_token_id")))
    ids: list[int] = []
    for source, value in sources:
        if value is None:
            continue
        for token in value if isinstance(value, list) else [value]:
            if not _is_int(token) or token < 0:
                raise LimitError(f"{source}: {token!r} is not a token id")
            if token not in ids:
                ids.append(token)
    if not ids:
        raise LimitError("eos_token_id: in neither config.json nor generation_config.json")
    return tuple(ids)
