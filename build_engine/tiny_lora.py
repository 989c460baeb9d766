"""A small LoRA adapter made in-process for a served base (tests and the dev stack).

Nothing is downloaded: PEFT's own `LoraConfig` + `get_peft_model` wrap the base read from its HF
folder, the low-rank weights are filled with seeded random values (PEFT initialises lora_B to
zero, which would change nothing), and PEFT's `save_pretrained` writes the folder a user would
bring (adapter_config.json + adapter_model.safetensors).

`std` is large on purpose: with rank 8 on q_proj/v_proj of every layer, the deltas must be big
enough that greedy decoding picks other tokens, so tests can tell an adapter was applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DEFAULT_TARGETS = ("q_proj", "v_proj")


def make_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    rank: int = 8,
    alpha: int = 16,
    targets: Sequence[str] = DEFAULT_TARGETS,
    std: float = 0.05,
) -> Path:
    """Write a PEFT LoRA adapter of `base_dir` into `out_dir`; return `out_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    # The base's folder path as base_model_name_or_path, as a fine-tune of it would record.
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(str(out_dir))
    return out_dir
