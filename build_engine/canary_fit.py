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

When the stable version and a recorded canary are both loaded at start-up, both fractions can be
planned together (`share_kv`): the stable executor then leaves room for the canary's.
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


@dataclass(frozen=True, slots=True)
class SharedFractions:
    """kv_cache_free_gpu_mem_fraction of the stable executor (loaded first) and the canary's."""

    stable: float
    canary: float
    reason: str


def share_kv(
    stable: Footprint, canary: Footprint, weight: int, policy: SwitchPolicy
) -> SharedFractions | None:
    """Each executor's KV fraction when a TensorRT-LLM stable version and its canary are loaded
    together from the start (the stable one first), or None when that does not apply: not both
    TensorRT-LLM on GPUs, reduced KV caches not accepted by the operator
    (`SwitchPolicy.reduced_min_ratio` None), or the stable version's share would fall below
    that ratio of the KV cache it gets alone.

    Per GPU of M bytes, with each engine's weights and the runtime overhead taken first, the
    `room` left holds both KV caches; the stable version's configured fraction of it is shared
    (the rest stays free, as the fraction leaves it when an engine loads alone), the canary
    getting its traffic weight's share. TensorRT-LLM takes the fraction of the memory free at
    its own load, so the stable fraction is of M less its own weights and overhead, and the
    canary's of what the stable executor and the canary's weights leave.
    """
    if stable.kind != "tensorrt_llm" or canary.kind != "tensorrt_llm":
        return None
    if policy.reduced_min_ratio is None:
        return None
    memory = min(stable.gpu_memory_bytes, canary.gpu_memory_bytes)
    fixed_s = policy.runtime_overhead_bytes + stable.weights_bytes
    fixed_c = policy.runtime_overhead_bytes + canary.weights_bytes
    room = memory - fixed_s - fixed_c
    if room <= 0:
        return None
    shared = stable.fraction * room
    kv_canary = shared * weight / 100
    kv_stable = shared - kv_canary
    kv_alone = stable.fraction * (memory - fixed_s)
    if kv_stable < policy.reduced_min_ratio * kv_alone:
        return None
    f_stable = kv_stable / (memory - fixed_s)
    f_canary = kv_canary / (room - kv_stable)
    gib = 1 << 30
    return SharedFractions(
        f_stable,
        f_canary,
        f"KV shared by weight {weight}%: stable {kv_stable / gib:.1f} GiB "
        f"({kv_stable / kv_alone:.0%} of alone, kv_cache_free_gpu_mem_fraction {f_stable:.3f}), "
        f"canary {kv_canary / gib:.1f} GiB (fraction {f_canary:.3f}) per GPU of "
        f"{memory / gib:.1f} GiB",
    )


def plan_canary(stable: Footprint, canary: Footprint, policy: SwitchPolicy) -> CanaryFit:
    """Whether `canary` fits beside `stable` (ValueError naming a bad footprint field)."""
    plan = plan_switch(stable, canary, policy)
    if plan.mode is Mode.LOAD_BESIDE:
        return CanaryFit(True, plan.reason)
    if plan.mode is Mode.REDUCED_FRACTION:
        return CanaryFit(True, plan.reason, plan.fraction)
    return CanaryFit(False, f"the canary does not fit beside the stable version: {plan.reason}")
