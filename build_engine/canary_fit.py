"""Can a canary run beside the stable version on the same GPUs? A pure decision.

A canary keeps both executors loaded for as long as it runs, so there is no "unload first" to
fall back on: it fits when `switch_plan.plan_switch` (the stable version as the loaded one, the
canary as the new one: the same per-GPU arithmetic of weights from the manifest's engine files,
the SKU's or the detected GPU's memory, TensorRT-LLM's kv_cache_free_gpu_mem_fraction of the
memory left free, vLLM's gpu_memory_utilization of the total) says LOAD_BESIDE, or, when the
operator allows reduced fractions (`SwitchPolicy.reduced_min_ratio`), REDUCED_FRACTION: the
canary is then loaded with the planned kv_cache_free_gpu_mem_fraction. That fraction is the
canary's own: it runs as its own Triton model with its own config (model_versions.py), so the
stable executor's KV cache is untouched. Otherwise the canary is refused with the plan's figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoglm.build_engine.install import TOKENIZER_FILES
from autoglm.build_engine.manifest import Manifest
from autoglm.build_engine.switch_plan import Footprint, Mode, SwitchPolicy, plan_switch


@dataclass(frozen=True, slots=True)
class CanaryFit:
    fits: bool
    reason: str
    # The canary's kv_cache_free_gpu_mem_fraction when reduced to fit; None: its config's own.
    fraction: float | None = None


def request_mismatch(stable: Manifest, canary: Manifest) -> str | None:
    """Why requests prepared for the stable version would not suit the canary, or None.

    The façade tokenizes and bounds a request once, with the stable version's tokenizer and
    what the stable version was built for (server/app.py `_spec_of`), whichever version then
    answers it: a canary with other tokenizer files would get ids of another vocabulary, and
    one built for shorter prompts or contexts would fail requests the stable version serves
    (the rollback guard would then judge the canary on the traffic it cannot take).
    """
    a, b = stable.profile, canary.profile
    for name in ("max_input_len", "max_seq_len"):
        mine, theirs = getattr(b, name), getattr(a, name)
        if mine < theirs:
            return (
                f"{name}: the canary was built for {mine}, the stable version for {theirs}: "
                "requests the stable version serves would fail on the canary"
            )
    differ = [n for n in TOKENIZER_FILES if stable.files.get(n) != canary.files.get(n)]
    if differ:
        return (
            f"tokenizer: {', '.join(differ)} differ from the stable version's (requests are "
            "tokenized once, by the stable version's tokenizer)"
        )
    return None


def plan_canary(stable: Footprint, canary: Footprint, policy: SwitchPolicy) -> CanaryFit:
    """Whether `canary` fits beside `stable` (ValueError naming a bad footprint field)."""
    plan = plan_switch(stable, canary, policy)
    if plan.mode is Mode.LOAD_BESIDE:
        return CanaryFit(True, plan.reason)
    if plan.mode is Mode.REDUCED_FRACTION:
        return CanaryFit(True, plan.reason, plan.fraction)
    return CanaryFit(False, f"the canary does not fit beside the stable version: {plan.reason}")
