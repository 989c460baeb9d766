"""The models the façade serves: public name → Triton model, tokenizer, ids and limits."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.server.adapters import AdapterError, AdapterSet, ServedAdapter
from autoglm.server.model_limits import (
    EngineLimits,
    ModelLimits,
    Overrides,
    end_of_sequence_ids,
    resolve_limits,
    stated_context,
    stated_default_max_tokens,
)
from autoglm.server.tokenization import PromptEncoder
from autoglm.server.vision import ImageLimits, VisionSpec, load_vision

# Engines of the vLLM contract (triton_models/vllm_contract.py): Triton's vLLM backend on a GPU
# and its CPU reference engine; the others ("tensorrt_llm", "cpu_reference") take token ids.
TEXT_ENGINES = frozenset({"vllm", "cpu_reference_vl"})
ENGINES = frozenset({"tensorrt_llm", "cpu_reference"}) | TEXT_ENGINES


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How one public model maps onto the engine (from settings).

    The limits are the model's own (model_limits.py) unless set here: an operator may lower
    them; a value above the model's own is refused at start.
    """

    name: str  # public name, GenerateRequest.model
    triton_model: str  # the Triton model serving it
    tokenizer_dir: Path  # HF folder with tokenizer.json (+ chat template, config.json)
    engine: str = "cpu_reference"  # one of ENGINES: what the façade speaks to (token ids or text)
    max_context_tokens: int | None = None
    max_output_tokens: int | None = None
    default_max_tokens: int | None = None
    # What the installed engine was built for (its manifest), for a model-repository version.
    engine_limits: EngineLimits | None = None
    # Images (vision-language models only, vision.py): the per-request limits, and the pixel
    # budget when the engine is told another than its processor's (vLLM's mm_processor_kwargs).
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    image_max_pixels: int | None = None


@dataclass(frozen=True, slots=True)
class ServedModel:
    spec: ModelSpec
    encoder: PromptEncoder
    # Every end-of-sequence id, the one the engine gets as `end_id` first (model_limits.py).
    end_ids: tuple[int, ...]
    pad_id: int
    limits: ModelLimits
    vision: VisionSpec | None = None  # None: a text-only model

    @property
    def returns_text(self) -> bool:
        """Whether the engine speaks text (the vLLM contract) rather than token ids."""
        return self.spec.engine in TEXT_ENGINES

    @property
    def end_id(self) -> int:
        return self.end_ids[0]

    @property
    def stop_words(self) -> tuple[tuple[int, ...], ...]:
        """The other end-of-sequence ids, as single-token stop words: TensorRT-LLM's backend
        takes one `end_id` (contract.END_ID) and ends on any of `stop_words_list`, as its own
        LLM API sends `stop_token_ids` (`SamplingParams._get_stop_words`,
        tensorrt_llm/sampling_params.py)."""
        return tuple((token,) for token in self.end_ids[1:])

    def end_at(self, ids: Sequence[int]) -> int | None:
        """The index of the first end-of-sequence id in `ids`, or None.

        TensorRT-LLM leaves `end_id` out of its output but keeps a matched stop word's tokens
        in it (tensorrt_llm/executor/result.py `_handle_sequence` trims them only for its own
        callers); the pipeline cuts at this index so that every end-of-sequence id looks
        the same to a caller: in neither text, token_ids nor usage.
        """
        # `in` / `index` scan in C: this runs on every batch of the hot path.
        found = [ids.index(end) for end in self.end_ids if end in ids]
        return min(found) if found else None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def load_model(spec: ModelSpec) -> ServedModel:
    """Load the tokenizer, the end/pad ids and the limits of a model from its folder
    (config.json, generation_config.json) and its engine's limits; ValueError (LimitError)
    naming the folder when they cannot be resolved."""
    config = _read_json(spec.tokenizer_dir / "config.json") or {}
    generation = _read_json(spec.tokenizer_dir / "generation_config.json")
    try:
        end_ids = end_of_sequence_ids(config, generation)
        limits = resolve_limits(
            stated_context(config, generation, spec.engine_limits),
            engine=spec.engine_limits,
            default_max_tokens=stated_default_max_tokens(generation),
            overrides=Overrides(
                spec.max_context_tokens, spec.max_output_tokens, spec.default_max_tokens
            ),
        )
    except ValueError as exc:
        raise type(exc)(f"model {spec.name} ({spec.tokenizer_dir}): {exc}") from None
    pad_id = _pad_id(config, generation)
    if spec.engine not in ENGINES:
        raise ValueError(f"model {spec.name}: unknown engine {spec.engine!r} ({sorted(ENGINES)})")
    vision = load_vision(
        spec.tokenizer_dir, limits=spec.image_limits, max_pixels=spec.image_max_pixels
    )
    encoder = PromptEncoder.from_model_dir(
        spec.tokenizer_dir, image_placeholder=vision.placeholder if vision else ""
    )
    if vision is not None:
        # The engine expands the token the tokenizer gives the placeholder: config.json's id must
        # be that one, or every image request would fail (refused here, at start, instead).
        found = encoder.tokenizer.token_to_id(vision.image_token)
        if found != vision.image_token_id:
            raise ValueError(
                f"model {spec.name}: config.json's image_token_id {vision.image_token_id} is not"
                f" the tokenizer's id of {vision.image_token!r} ({found})"
            )
    if vision is not None and spec.engine not in TEXT_ENGINES:
        raise ValueError(
            f"model {spec.name}: a vision-language model needs a text engine"
            f" ({sorted(TEXT_ENGINES)}), not {spec.engine!r}"
        )
    return ServedModel(
        spec=spec,
        vision=vision,
        encoder=encoder,
        end_ids=end_ids,
        # SmolLM2 has no pad token: pad with eos, as TensorRT-LLM's examples do.
        pad_id=pad_id if pad_id is not None else end_ids[0],
        limits=limits,
    )


def _pad_id(config: dict[str, Any], generation: dict[str, Any] | None) -> int | None:
    """generation_config.json's pad_token_id, else config.json's (or its text_config's)."""
    text = config.get("text_config")
    for source in (generation or {}, config, text if isinstance(text, dict) else {}):
        value = source.get("pad_token_id")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class ModelRegistry:
    def __init__(self, models: list[ServedModel], adapters: AdapterSet | None = None) -> None:
        self._models = {m.spec.name: m for m in models}
        self.adapters = adapters or AdapterSet()
        for adapter in self.adapters:
            base = self._models.get(adapter.base)
            if base is None or base.returns_text:
                # Refused at start (app.py logs and drops it): only the token-id contract
                # carries LoRA tensors (lora_task_id, lora_weights, lora_config).
                raise AdapterError(
                    f"adapter {adapter.name}: base {adapter.base!r} is not a served model"
                    " on a token-id engine (tensorrt_llm, cpu_reference)"
                )

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def replace(self, model: ServedModel) -> None:
        """Serve `model` in place of the one of its name (a switched version: app.py)."""
        if model.spec.name not in self._models:
            raise KeyError(model.spec.name)
        self._models[model.spec.name] = model

    def adapter(self, name: str) -> ServedAdapter | None:
        return self.adapters.get(name)

    def __iter__(self):
        return iter(self._models.values())

    def names(self) -> list[str]:
        return sorted(self._models)
