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

from autoglm.build_engine.switch_plan import Footprint, Mode, SwitchPolicy, plan_switch


@dataclass(frozen=True, slots=True)
class CanaryFit:
    fits: bool
    reason: str
    # The canary's kv_cache_free_gpu_mem_fraction when reduced to fit; None: its config's own.
    fraction: float | None = None


def plan_canary(stable: Footprint, canary: Footprint, policy: SwitchPolicy) -> CanaryFit:
    """Whether `canary` fits beside `stable` (ValueError naming a bad footprint field)."""
    plan = plan_switch(stable, canary, policy)
    if plan.mode is Mode.LOAD_BESIDE:
        return CanaryFit(True, plan.reason)
    if plan.mode is Mode.REDUCED_FRACTION:
        return CanaryFit(True, plan.reason, plan.fraction)
    return CanaryFit(False, f"the canary does not fit beside the stable version: {plan.reason}")
