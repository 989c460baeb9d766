"""PEFT LoRA weights <-> TensorRT-LLM's `lora_weights` / `lora_config` arrays (lora_contract.py).

Pure numpy, no torch and no I/O: the registry converts with `to_trtllm` (build_engine/
adapters.py) and the CPU reference engine rebuilds the low-rank pairs with `from_trtllm`, so a
request carries the same arrays to both engines.

The layout is `convert_hf_model` of TensorRT-LLM's examples/hf_lora_convert.py (commit cited in
lora_contract.py): per (layer, module) one row, the in-weights A [rank, hidden_in] flattened,
then the out-weights B [hidden_out, rank] multiplied by the scale (lora_alpha / rank, or
lora_alpha / sqrt(rank) with rsLoRA) flattened, zero-padded to the longest row; the whole with
a leading batch dim of 1, in the storage dtype (float16 by default, as the backend declares
`lora_weights`). One difference, on purpose: rows are sorted by (layer, module id), where the
script keeps the state dict's order, so the same adapter always gives the same bytes (and the
same sha256 and task id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models.refusal import Refusal

# (layer index, HF module name such as "q_proj") -> (A [rank, in], B [out, rank])
Modules = dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]

# hf_lora_convert.py's get_all_lora_weights pattern (PEFT keys such as
# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight).
_PEFT_KEY = re.compile(r".*\.layers\.([0-9]+)\.(self_attn|mlp)\.([a-z_]+)\.lora_(A|B)\.weight$")


def peft_modules(state: Mapping[str, np.ndarray]) -> Modules:
    """Group a PEFT adapter's tensors by (layer, module); ValueError naming a key that is not a
    LoRA A/B weight of a known module, or a module with one half missing."""
    halves: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in state.items():
        found = _PEFT_KEY.match(key)
        if not found:
            raise ValueError(f"adapter_model.safetensors: {key!r} is not a LoRA A/B weight")
        layer, module, half = int(found.group(1)), found.group(3), found.group(4)
        if module not in lc.HF_TO_TRTLLM:
            raise ValueError(
                f"target_modules: {module!r} has no TensorRT-LLM LoRA module "
                f"(known: {sorted(lc.HF_TO_TRTLLM)})"
            )
        halves.setdefault((layer, module), {})[half] = np.asarray(value)
    out: Modules = {}
    for (layer, module), pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            raise ValueError(f"adapter_model.safetensors: layer {layer} {module} lacks lora_A/B")
        out[(layer, module)] = (pair["A"], pair["B"])
    return out


def to_trtllm(
    modules: Modules, *, scale: float, dtype: np.dtype | type = np.float16
) -> tuple[np.ndarray, np.ndarray]:
    """(lora_weights [1, rows, width] in `dtype`, lora_config [1, rows, 3] int32)."""
    rows: list[np.ndarray] = []
    config: list[list[int]] = []
    key = lambda item: (item[0][0], lc.MODULE_IDS[lc.HF_TO_TRTLLM[item[0][1]]])  # noqa: E731
    for (layer, module), (a, b) in sorted(modules.items(), key=key):
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
            raise ValueError(f"layer {layer} {module}: A {a.shape} and B {b.shape} do not pair")
        scaled = b.astype(np.float32) * np.float32(scale)
        rows.append(np.concatenate([a.astype(np.float32).ravel(), scaled.ravel()]))
        config.append([lc.MODULE_IDS[lc.HF_TO_TRTLLM[module]], layer, rank])
    width = max((r.size for r in rows), default=0)
    weights = np.zeros((1, len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        weights[0, i, : row.size] = row
    return weights, np.asarray(config, dtype=np.int32).reshape(1, len(config), 3)


def from_trtllm(
    weights: np.ndarray,
    config: np.ndarray,
    *,
    dims: Mapping[str, tuple[int, int]],
    num_layers: int,
    max_rank: int,
) -> Modules:
    """Rebuild (A [rank, in], B [out, rank] already scaled) per (layer, HF module) from one
    request's arrays (with or without the leading batch dim of 1), as float32.

    `dims` gives each HF module's (in, out) features in the base model. Every inconsistency is a
    Refusal naming `lora_config` or `lora_weights`, as the executor validates them
    (`loraValidateRequestTensors`, cpp/tensorrt_llm/runtime/loraUtils.cpp)."""
    if config.ndim == 3 and config.shape[0] == 1:
        config = config[0]
    if weights.ndim == 3 and weights.shape[0] == 1:
        weights = weights[0]
    if config.ndim != 2 or config.shape[1] != 3:
        raise Refusal(lc.LORA_CONFIG.name, f"must be [1, rows, 3], got shape {config.shape}")
    if weights.ndim != 2 or weights.shape[0] != config.shape[0]:
        raise Refusal(
            lc.LORA_WEIGHTS.name,
            f"must be [1, {config.shape[0]}, width] to match lora_config, got {weights.shape}",
        )
    out: Modules = {}
    for i, (module_id, layer, rank) in enumerate(config.tolist()):
        module = lc.HF_MODULE_BY_ID.get(module_id)
        if module is None or module not in dims:
            raise Refusal(lc.LORA_CONFIG.name, f"row {i}: module id {module_id} not in the model")
        if not 0 <= layer < num_layers:
            raise Refusal(lc.LORA_CONFIG.name, f"row {i}: layer {layer} not in [0, {num_layers})")
        if not 0 < rank <= max_rank:
            raise Refusal(lc.LORA_CONFIG.name, f"row {i}: rank {rank} not in [1, {max_rank}]")
        if (layer, module) in out:
            raise Refusal(lc.LORA_CONFIG.name, f"row {i}: layer {layer} {module} given twice")
        d_in, d_out = dims[module]
        need = rank * d_in + d_out * rank
        if need > weights.shape[1]:
            raise Refusal(
                lc.LORA_WEIGHTS.name, f"row {i}: {weights.shape[1]} values, {need} needed"
            )
        row = weights[i].astype(np.float32)
        a = row[: rank * d_in].reshape(rank, d_in)
        b = row[rank * d_in : need].reshape(d_out, rank)
        out[(layer, module)] = (a, b)
    return out
