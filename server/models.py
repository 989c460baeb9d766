"""The models the façade serves: public name → Triton model, tokenizer, ids and limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoglm.server.tokenization import PromptEncoder


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How one public model maps onto the engine (from settings)."""

    name: str  # public name, GenerateRequest.model
    triton_model: str  # the Triton model serving it
    tokenizer_dir: Path  # HF folder with tokenizer.json (+ chat template, config.json)
    engine: str = "cpu_reference"  # or "tensorrt_llm"
    max_context_tokens: int = 2048
    max_output_tokens: int = 1024
    default_max_tokens: int = 256


@dataclass(frozen=True, slots=True)
class ServedModel:
    spec: ModelSpec
    encoder: PromptEncoder
    end_id: int
    pad_id: int


def load_model(spec: ModelSpec) -> ServedModel:
    """Load the tokenizer and the end/pad ids of a model (config.json / generation_config.json)."""
    ids: dict[str, object] = {}
    for name in ("config.json", "generation_config.json"):
        path = spec.tokenizer_dir / name
        if path.is_file():
            ids.update(
                {k: v for k, v in json.loads(path.read_text()).items() if k.endswith("_token_id")}
            )
    end_id = ids.get("eos_token_id")
    if isinstance(end_id, list):  # some models list several; the engine takes one end_id
        end_id = end_id[0] if end_id else None
    if not isinstance(end_id, int):
        raise ValueError(
            f"{spec.tokenizer_dir}: no eos_token_id in config.json/generation_config.json"
        )
    pad_id = ids.get("pad_token_id")
    return ServedModel(
        spec=spec,
        encoder=PromptEncoder.from_model_dir(spec.tokenizer_dir),
        end_id=end_id,
        # SmolLM2 has no pad token: pad with eos, as TensorRT-LLM's examples do.
        pad_id=pad_id if isinstance(pad_id, int) else end_id,
    )


class ModelRegistry:
    def __init__(self, models: list[ServedModel]) -> None:
        self._models = {m.spec.name: m for m in models}

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def __iter__(self):
        return iter(self._models.values())

    def names(self) -> list[str]:
        return sorted(self._models)
