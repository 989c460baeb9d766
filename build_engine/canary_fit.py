"""Can a canary run beside the stable version on the same GPUs? A pure decision.

A canary keeps both executors loaded for as long as it runs, so there is no "unload first" to
fall back on: it fits only when `switch_plan.plan_switch` (the stable version as the loaded one,
the canary as the new one: the same per-GPU arithmetic of weights from the manifest's engine
files, the SKU's or the detected GPU's memory, TensorRT-LLM's kv_cache_free_gpu_mem_fraction of
the memory left free, vLLM's gpu_memory_utilization of the total) says LOAD_BESIDE. Otherwise
the canary is refused with the plan's figures. A reduced KV fraction (REDUCED_FRACTION) is not
applied to a canary: Triton gives both versions one config, so the fraction would shrink the
stable version's KV cache too at its next load.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoglm.build_engine.switch_plan import Footprint, Mode, SwitchPolicy, plan_switch


@dataclass(frozen=True, slots=True)
class CanaryFit:
    fits: bool
    reason: str


def plan_canary(stable: Footprint, canary: Footprint, policy: SwitchPolicy) -> CanaryFit:
    """Whether `canary` fits beside `stable` (ValueError naming a bad footprint field)."""
    plan = plan_switch(stable, canary, policy)
    if plan.mode is Mode.LOAD_BESIDE:
        return CanaryFit(True, plan.reason)
    return CanaryFit(False, f"the canary does not fit beside the stable version: {plan.reason}")
