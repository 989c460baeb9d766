"""A canary's GPU fit beside the stable version (build_engine/canary_fit.py)."""

from __future__ import annotations

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.canary_fit import plan_canary, request_mismatch, share_kv
from autoglm.build_engine.switch_plan import GIB, Footprint, SwitchPolicy

NO_OVERHEAD = SwitchPolicy(runtime_overhead_bytes=0)


def trt(weights_gib: float, memory_gib: int = 80, fraction: float = 0.9) -> Footprint:
    return Footprint("tensorrt_llm", 1, int(weights_gib * GIB), fraction, memory_gib * GIB)


def test_two_executors_at_the_default_fraction_are_refused_naming_the_figures() -> None:
    fit = plan_canary(trt(16), trt(16), NO_OVERHEAD)
    assert not fit.fits
    assert "does not fit beside the stable version" in fit.reason
    assert "old version holds 73.6 GiB" in fit.reason and "80.0 GiB" in fit.reason


def test_small_fractions_fit_and_a_reduced_fraction_is_the_canarys_own() -> None:
    fit = plan_canary(trt(1, fraction=0.05), trt(1, fraction=0.05), NO_OVERHEAD)
    assert fit.fits and fit.fraction is None  # the canary's config keeps its own fraction
    # Stable at 0.3 holds 16 + 0.3 x 64 = 35.2 GiB; the canary at 0.9 would get 45 % of its
    # alone KV cache beside it: refused by default, loaded with a reduced fraction if allowed.
    stable, canary = trt(16, fraction=0.3), trt(16)
    assert not plan_canary(stable, canary, NO_OVERHEAD).fits
    reduced = SwitchPolicy(runtime_overhead_bytes=0, reduced_min_ratio=0.3)
    fit = plan_canary(stable, canary, reduced)
    # 28.8 GiB free beside after its weights, less the 6.4 GiB it leaves free alone: 22.4 GiB.
    assert fit.fits and fit.fraction is not None and abs(fit.fraction - 22.4 / 28.8) < 1e-9
    assert "kv_cache_free_gpu_mem_fraction 0.778" in fit.reason
    # Not even a reduced fraction leaves room at 0.5 each: refused with the figures.
    assert not plan_canary(trt(16, fraction=0.5), trt(16, fraction=0.5), reduced).fits


def test_vllm_shares_must_add_up_and_cpu_always_fits() -> None:
    def vllm(share: float) -> Footprint:
        return Footprint("vllm", 1, 0, share, 80 * GIB)

    assert plan_canary(vllm(0.45), vllm(0.45), NO_OVERHEAD).fits
    fit = plan_canary(vllm(0.6), vllm(0.6), NO_OVERHEAD)
    assert not fit.fits and "gpu_memory_utilization 0.6" in fit.reason
    assert plan_canary(Footprint("cpu_reference"), Footprint("cpu_reference"), NO_OVERHEAD).fits


def manifest(max_input_len: int = 1024, tokenizer: str = "aa") -> mf.Manifest:
    profile = mf.Profile(
        model="m", sku="h100-sxm", compute_capability="9.0", precision="fp8",
        kv_cache_dtype="fp8", tp=1, pp=1, max_batch=8, max_input_len=max_input_len,
        max_seq_len=2048, max_num_tokens=4096, profile="latency",
    )  # fmt: skip
    return mf.Manifest(profile, {"rank0.engine": "ee", "tokenizer.json": tokenizer})


def test_requests_prepared_for_the_stable_version_must_suit_the_canary() -> None:
    stable = manifest()
    assert request_mismatch(stable, manifest()) is None
    assert request_mismatch(stable, manifest(max_input_len=4096)) is None  # more room is fine
    assert request_mismatch(stable, manifest(max_input_len=512)) == (
        "max_input_len: the canary was built for 512, the stable version for 1024: requests the"
        " stable version serves would fail on the canary"
    )
    why = request_mismatch(stable, manifest(tokenizer="bb"))
    assert why is not None and why.startswith("tokenizer: tokenizer.json differ")


def test_a_stable_version_loaded_first_can_leave_its_canary_a_share() -> None:
    """80 GiB, two 16 GiB engines at 0.9, no overhead: 48 GiB of room, 0.9 of it (43.2 GiB)
    shared by the canary's weight."""
    allowed = SwitchPolicy(runtime_overhead_bytes=0, reduced_min_ratio=0.5)
    shared = share_kv(trt(16), trt(16), 10, allowed)
    assert shared is not None
    kv_stable, kv_canary = 0.9 * 48 * 0.9, 0.9 * 48 * 0.1  # GiB
    assert abs(shared.stable - kv_stable / 64) < 1e-9  # of the 64 GiB free at its load
    assert abs(shared.canary - kv_canary / (48 - kv_stable)) < 1e-9  # of what is left then
    # As plan_switch reckons it: the canary's KV beside the stable executor is its share.
    assert "stable 38.9 GiB (68% of alone" in shared.reason and "canary 4.3 GiB" in shared.reason
    # Not without the operator's consent to reduced caches, not below the accepted ratio, not
    # for other engines.
    assert share_kv(trt(16), trt(16), 10, NO_OVERHEAD) is None
    assert share_kv(trt(16), trt(16), 40, allowed) is None  # the stable keeps 41 % < 50 %
    vllm = Footprint("vllm", 1, 0, 0.45, 80 * GIB)
    assert share_kv(vllm, vllm, 10, allowed) is None
    assert share_kv(trt(40), trt(41), 10, allowed) is None  # no room left for any KV
