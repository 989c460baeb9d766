"""Tensor / pipeline parallel sizes a model's shape allows (checked before any export).

Pure rules over the HF `config.json` fields; only `ModelShape.from_model_dir` reads a file.
ModelOpt 0.47's `export_tensorrt_llm_checkpoint` does not check them itself (measured on
SmolLM2-135M, 9 heads / 3 KV heads / intermediate 1536 / 30 layers, docs/build.md):
- tp=2 exported "successfully" with a fused QKV of [480, 576] per rank, i.e. 7.5 heads of 64:
  ranks a TensorRT-LLM build would reject or compute garbage with;
- tp=9 split the MLP with `torch.chunk` into 171-row ranks and one 168-row rank (1536 % 9 != 0),
  while every rank's config says intermediate 1536 / 9;
- pp=4 failed with a bare `AssertionError` (modelopt/torch/export/postprocess.py
  `_split_model_config_for_pp`: `assert num_layers % split_factor == 0`).
KV heads fewer than tp are replicated when tp is a multiple of them (tp=9 gave every rank one
KV head: a fused QKV of [192, 576] = (1 + 1 + 1) x 64), as TensorRT-LLM's attention expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoglm.build_engine.plan import PlanError


class ParallelismError(PlanError):
    """--tp / --pp cannot split this model."""


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    intermediate_size: int

    @classmethod
    def from_config(cls, name: str, config: dict[str, object]) -> ModelShape:
        try:
            heads = int(config["num_attention_heads"])  # type: ignore[call-overload]
            return cls(
                name=name,
                num_attention_heads=heads,
                # HF's default when absent: no grouped-query attention.
                num_key_value_heads=int(config.get("num_key_value_heads") or heads),  # type: ignore[call-overload]
                num_hidden_layers=int(config["num_hidden_layers"]),  # type: ignore[call-overload]
                intermediate_size=int(config["intermediate_size"]),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ParallelismError(f"{name}: config.json lacks a usable {exc}") from None

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ModelShape:
        path = model_dir / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ParallelismError(f"cannot read {path}: {exc}") from None
        return cls.from_config(model_dir.name, config)


def tp_problem(tp: int, shape: ModelShape) -> str | None:
    """Why `tp` cannot split `shape`, or None."""
    if shape.num_attention_heads % tp:
        return f"its {shape.num_attention_heads} attention heads are not divisible by {tp}"
    kv = shape.num_key_value_heads
    if kv % tp and tp % kv:
        return (
            f"its {kv} KV heads can neither be split over {tp} ranks nor replicated "
            f"({tp} is not a multiple of {kv})"
        )
    if shape.intermediate_size % tp:
        return f"its MLP intermediate size {shape.intermediate_size} is not divisible by {tp}"
    return None


def pp_problem(pp: int, shape: ModelShape) -> str | None:
    """Why `pp` cannot split `shape`, or None."""
    if shape.num_hidden_layers % pp:
        return (
            f"its {shape.num_hidden_layers} layers cannot be split evenly into {pp} pipeline stages"
        )
    return None


def allowed_tp(shape: ModelShape) -> list[int]:
    return [n for n in range(1, shape.num_attention_heads + 1) if tp_problem(n, shape) is None]


def allowed_pp(shape: ModelShape) -> list[int]:
    return [n for n in range(1, shape.num_hidden_layers + 1) if pp_problem(n, shape) is None]


def check_parallelism(tp: int, pp: int, shape: ModelShape) -> None:
    """ParallelismError naming the flag, the reason and the values that would work."""
    for flag, value, problem, allowed in (
        ("--tp", tp, tp_problem, allowed_tp),
        ("--pp", pp, pp_problem, allowed_pp),
    ):
        why = problem(value, shape)
        if why is not None:
            values = ", ".join(str(n) for n in allowed(shape))
            raise ParallelismError(
                f"{flag} {value} cannot split {shape.name}: {why}; {flag} can be {values}"
            )
