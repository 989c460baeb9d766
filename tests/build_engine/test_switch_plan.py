"""plan_switch: which way a version switch fits in GPU memory (pure arithmetic, no GPU)."""

from __future__ import annotations

import pytest

from autoglm.build_engine.switch_plan import GIB, Footprint, Mode, SwitchPolicy, plan_switch

NO_OVERHEAD = SwitchPolicy(runtime_overhead_bytes=0)


def trt(
    weights_gib: float, memory_gib: int = 80, fraction: float = 0.9, gpus: int = 1
) -> Footprint:
    return Footprint("tensorrt_llm", gpus, int(weights_gib * GIB), fraction, memory_gib * GIB)


def vllm(share: float, memory_gib: int = 80) -> Footprint:
    return Footprint("vllm", 1, 0, share, memory_gib * GIB)


CPU = Footprint("cpu_reference")


def test_nothing_loaded_is_a_plain_load() -> None:
    assert plan_switch(None, trt(16), SwitchPolicy()).mode is Mode.LOAD_BESIDE


@pytest.mark.parametrize("new", [CPU, Footprint("cpu_reference_vl")])
def test_cpu_engines_keep_loading_beside(new: Footprint) -> None:
    plan = plan_switch(CPU, new, SwitchPolicy())
    assert plan.mode is Mode.LOAD_BESIDE and "CPU" in plan.reason
    assert plan_switch(trt(16), new, SwitchPolicy()).mode is Mode.LOAD_BESIDE


def test_default_fraction_leaves_the_new_executor_a_tenth_so_unload_first() -> None:
    """80 GiB H100, 16 GiB engine, fraction 0.9: the old executor holds 16 + 0.9 * 64 = 73.6 GiB;
    6.4 GiB are free, the new engine's weights take 16: no KV memory at all beside."""
    plan = plan_switch(trt(16), trt(16), NO_OVERHEAD)
    assert plan.mode is Mode.UNLOAD_FIRST
    assert plan.kv_alone_bytes == int(0.9 * 64 * GIB) and plan.kv_beside_bytes == 0
    assert "does not fit beside" in plan.reason and "old version holds 73.6 GiB" in plan.reason


def test_small_engines_with_a_low_fraction_fit_beside() -> None:
    # fraction 0.05: old holds 1 + 0.05 * 79 = 4.95 GiB; new alone 0.05 * 79 = 3.95 GiB of KV,
    # beside 0.05 * (80 - 4.95 - 1) = 3.70 GiB: 94 % >= 90 %.
    plan = plan_switch(trt(1, fraction=0.05), trt(1, fraction=0.05), NO_OVERHEAD)
    assert plan.mode is Mode.LOAD_BESIDE and plan.fraction is None
    assert plan.kv_beside_bytes == pytest.approx(0.05 * (80 - 4.95 - 1) * GIB, rel=1e-6)
    # The same with a stricter minimum: unload first.
    strict = SwitchPolicy(min_kv_ratio=0.95, runtime_overhead_bytes=0)
    assert plan_switch(trt(1, fraction=0.05), trt(1, fraction=0.05), strict).mode is (
        Mode.UNLOAD_FIRST
    )


def test_runtime_overhead_counts_on_both_sides() -> None:
    # 24 GiB L4, 1 GiB engines, fraction 0.1, 2 GiB overhead: old holds 3 + 0.1 * 21 = 5.1;
    # beside: free 18.9 - 3 = 15.9 -> KV 1.59 vs alone 2.1 (76 %) < 90 %.
    policy = SwitchPolicy(runtime_overhead_bytes=2 * GIB)
    plan = plan_switch(trt(1, 24, 0.1), trt(1, 24, 0.1), policy)
    assert plan.mode is Mode.UNLOAD_FIRST
    assert plan.kv_beside_bytes == pytest.approx(1.59 * GIB, rel=1e-3)
    assert plan.kv_alone_bytes == pytest.approx(2.1 * GIB, rel=1e-3)


def test_reduced_fraction_only_when_the_operator_allows_it() -> None:
    # old: 8 GiB engine at fraction 0.5 on 80 GiB: holds 8 + 36 = 44; new alone: KV 0.9 * 72
    # = 64.8; beside: free 36 - 8 = 28; headroom as alone (0.1 * 72 = 7.2): KV 20.8 (32 %).
    old, new = trt(8, fraction=0.5), trt(8)
    assert plan_switch(old, new, NO_OVERHEAD).mode is Mode.UNLOAD_FIRST
    allow = SwitchPolicy(reduced_min_ratio=0.3, runtime_overhead_bytes=0)
    plan = plan_switch(old, new, allow)
    assert plan.mode is Mode.REDUCED_FRACTION
    assert plan.fraction == pytest.approx(20.8 / 28)
    assert plan.kv_beside_bytes == pytest.approx(20.8 * GIB, rel=1e-6)
    assert "kv_cache_free_gpu_mem_fraction 0.743" in plan.reason
    # Below the operator's floor: unload first after all.
    too_low = SwitchPolicy(reduced_min_ratio=0.5, runtime_overhead_bytes=0)
    assert plan_switch(old, new, too_low).mode is Mode.UNLOAD_FIRST


def test_reduced_fraction_never_exceeds_the_configured_one() -> None:
    allow = SwitchPolicy(reduced_min_ratio=0.01, runtime_overhead_bytes=0)
    for old_fraction in (0.1, 0.3, 0.5, 0.7):
        plan = plan_switch(trt(4, fraction=old_fraction), trt(4, fraction=0.8), allow)
        if plan.mode is Mode.REDUCED_FRACTION:
            assert plan.fraction is not None and 0 < plan.fraction <= 0.8


def test_tp_is_arithmetic_per_gpu() -> None:
    """A 70 GiB engine at TP 4 holds 17.5 GiB per GPU (weights_bytes is per GPU): the per-GPU
    arithmetic decides; the default fraction leaves no room on any rank."""
    per_gpu = trt(70 / 4, gpus=4)
    plan = plan_switch(per_gpu, per_gpu, NO_OVERHEAD)
    assert plan.mode is Mode.UNLOAD_FIRST
    assert plan.kv_alone_bytes == int(0.9 * (80 - 17.5) * GIB)


def test_engine_that_does_not_fit_even_alone() -> None:
    plan = plan_switch(trt(10, memory_gib=24), trt(30, memory_gib=24), NO_OVERHEAD)
    assert plan.mode is Mode.UNLOAD_FIRST and "even alone" in plan.reason


def test_vllm_shares_of_total_memory_must_add_up_to_at_most_one() -> None:
    assert plan_switch(vllm(0.45), vllm(0.45), SwitchPolicy()).mode is Mode.LOAD_BESIDE
    plan = plan_switch(vllm(0.9), vllm(0.9), SwitchPolicy())
    assert plan.mode is Mode.UNLOAD_FIRST and "gpu_memory_utilization 0.9" in plan.reason
    # vLLM after a CPU engine: nothing held on the GPU.
    assert plan_switch(CPU, vllm(0.9), SwitchPolicy()).mode is Mode.LOAD_BESIDE
    # A TensorRT-LLM executor (fraction 0.9 of free) leaves vLLM far less than 45 % of total.
    assert plan_switch(trt(8), vllm(0.45), SwitchPolicy()).mode is Mode.UNLOAD_FIRST


@pytest.mark.parametrize(
    ("old", "new", "policy", "message"),
    [
        (None, Footprint("onnx"), SwitchPolicy(), r"new.kind: unknown engine kind 'onnx'"),
        (None, Footprint("tensorrt_llm", 1, 0, 0.9, 0), SwitchPolicy(), r"new.gpu_memory_bytes"),
        (trt(1, fraction=1.5), trt(1), SwitchPolicy(), r"old.fraction: 1.5 must be in \(0, 1\]"),
        (None, trt(1), SwitchPolicy(min_kv_ratio=0), r"min_kv_ratio: 0 must be in \(0, 1\]"),
        (None, trt(1), SwitchPolicy(drain_timeout_s=0), r"drain_timeout_s: 0 must be > 0"),
    ],
)
def test_bad_inputs_name_the_field(
    old: Footprint | None, new: Footprint, policy: SwitchPolicy, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_switch(old, new, policy)
