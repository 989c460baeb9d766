"""How to switch a model's loaded version so that GPU memory fits: a pure decision.

Triton (explicit model control) loads the new version beside the old one and unloads the old one
only once the new one is READY (model_versions.py). Two GPU engines then share the GPUs:
- TensorRT-LLM sizes its KV cache once, at load, as `kv_cache_free_gpu_mem_fraction` of the GPU
  memory that is *free* after its weights and runtime buffers ("the default for
  free_gpu_memory_fraction is 0.9, which means TensorRT LLM will try to allocate 90% of free GPU
  memory for KV cache": TensorRT-LLM docs, examples/kvcacheconfig; backend default 0.9,
  triton_models/tensorrt_llm.py). The old executor holds 90 % of what was free, so the new one
  finds ~10 %: an OOM, a tiny KV cache, or (TP > 1) ranks that disagree and hang.
- vLLM's `gpu_memory_utilization` is a share of the *total* memory, per instance (vllm/config/
  cache.py CacheConfig), and its GPU worker refuses to start when less than total × that share
  is free ("Free memory on device ... on startup is less than desired GPU memory utilization",
  raised in the worker's init_device): two instances fit iff their shares add up to at most 1.

`plan_switch` answers, per GPU (every rank of a TP×PP engine holds 1/(TP×PP) of the weights and
the same KV share, so the arithmetic of one GPU is that of all; both versions are assumed to use
the same devices, `gpu_device_ids` starting at 0):
- LOAD_BESIDE: today's behaviour (CPU engines always; GPU engines when both fit);
- UNLOAD_FIRST: drain and unload the old version, then load the new one;
- REDUCED_FRACTION: only if the operator allows it (`SwitchPolicy.reduced_min_ratio`): load
  beside with a lower `kv_cache_free_gpu_mem_fraction`, computed to leave as many bytes free as
  the new engine leaves when loaded alone. The smaller KV cache stays until the next load
  (TensorRT-LLM does not grow it when the old version's memory is freed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

GIB = 1 << 30
CPU_KINDS = frozenset({"cpu_reference", "cpu_reference_vl"})
GPU_KINDS = frozenset({"tensorrt_llm", "vllm"})
# Per GPU, beside the engine's weights and its KV cache: the CUDA context, the executor's
# activation and decoder buffers (sized from max_batch/max_num_tokens at load). An assumption,
# not a measurement (no GPU here); an operator can set the measured figure.
DEFAULT_RUNTIME_OVERHEAD_BYTES = 2 * GIB


class Mode(enum.StrEnum):
    LOAD_BESIDE = "load_beside"
    UNLOAD_FIRST = "unload_first"
    REDUCED_FRACTION = "reduced_fraction"


@dataclass(frozen=True, slots=True)
class Footprint:
    """What one loaded (or to-be-loaded) version takes on each of its GPUs."""

    kind: str  # Profile.engine_kind
    gpus: int = 0  # TP × PP; 0 for a CPU engine
    weights_bytes: int = 0  # per GPU (the largest rank<N>.engine file)
    # tensorrt_llm: kv_cache_free_gpu_mem_fraction (of free memory); vllm: gpu_memory_utilization
    # (of total memory); unused for CPU engines.
    fraction: float = 0.9
    gpu_memory_bytes: int = 0  # usable memory of one GPU (0: a CPU engine)

    @property
    def on_gpu(self) -> bool:
        return self.kind not in CPU_KINDS


@dataclass(frozen=True, slots=True)
class SwitchPolicy:
    # LOAD_BESIDE only when the new executor's KV cache beside the old one is at least this
    # share of the KV cache it gets when loaded alone.
    min_kv_ratio: float = 0.9
    # None: never REDUCED_FRACTION. Else the smallest share of its alone KV cache the operator
    # accepts for a switch without a gap.
    reduced_min_ratio: float | None = None
    runtime_overhead_bytes: int = DEFAULT_RUNTIME_OVERHEAD_BYTES
    # How long UNLOAD_FIRST waits for in-flight requests on the old version (model_versions.py).
    drain_timeout_s: float = 30.0

    def validate(self) -> None:
        for name in ("min_kv_ratio", "reduced_min_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name}: {value!r} must be in (0, 1]")
        if self.runtime_overhead_bytes < 0:
            raise ValueError(f"runtime_overhead_bytes: {self.runtime_overhead_bytes} must be >= 0")
        if not self.drain_timeout_s > 0:
            raise ValueError(f"drain_timeout_s: {self.drain_timeout_s!r} must be > 0")


@dataclass(frozen=True, slots=True)
class SwitchPlan:
    mode: Mode
    reason: str
    # REDUCED_FRACTION: the kv_cache_free_gpu_mem_fraction of the new load; else None.
    fraction: float | None = None
    kv_alone_bytes: int = 0  # the new engine's KV cache (per GPU) when loaded alone
    kv_beside_bytes: int = 0  # ... when loaded beside the old version (with `fraction`)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _check(f: Footprint, role: str) -> None:
    if f.kind not in CPU_KINDS | GPU_KINDS:
        raise ValueError(f"{role}.kind: unknown engine kind {f.kind!r}")
    if not f.on_gpu:
        return
    if f.gpu_memory_bytes <= 0:
        raise ValueError(f"{role}.gpu_memory_bytes: {f.gpu_memory_bytes} must be > 0 on a GPU")
    if not 0 < f.fraction <= 1:
        raise ValueError(f"{role}.fraction: {f.fraction!r} must be in (0, 1]")
    if f.weights_bytes < 0:
        raise ValueError(f"{role}.weights_bytes: {f.weights_bytes} must be >= 0")


def used_bytes(f: Footprint, overhead: int) -> float:
    """What a loaded version holds on each GPU."""
    if not f.on_gpu:
        return 0.0
    if f.kind == "vllm":
        return f.fraction * f.gpu_memory_bytes  # weights, activations and KV within the share
    fixed = overhead + f.weights_bytes
    return fixed + f.fraction * max(0.0, f.gpu_memory_bytes - fixed)


def plan_switch(old: Footprint | None, new: Footprint, policy: SwitchPolicy) -> SwitchPlan:
    """How to replace `old` (None: nothing loaded) by `new`; ValueError naming a bad field."""
    policy.validate()
    _check(new, "new")
    if old is not None:
        _check(old, "old")
    if old is None:
        return SwitchPlan(Mode.LOAD_BESIDE, "nothing loaded: a plain load")
    if not new.on_gpu and not old.on_gpu:
        return SwitchPlan(Mode.LOAD_BESIDE, "CPU engines: no GPU memory to share")
    if not new.on_gpu:
        return SwitchPlan(Mode.LOAD_BESIDE, f"{new.kind} uses no GPU memory")
    total = new.gpu_memory_bytes
    held = used_bytes(old, policy.runtime_overhead_bytes)
    free = total - held
    if new.kind == "vllm":
        need = new.fraction * total
        if need <= free:
            return SwitchPlan(
                Mode.LOAD_BESIDE,
                f"vllm needs {_gib(need)} (gpu_memory_utilization {new.fraction}) per GPU; "
                f"{_gib(free)} free beside the old version",
            )
        return SwitchPlan(
            Mode.UNLOAD_FIRST,
            f"vllm needs {_gib(need)} (gpu_memory_utilization {new.fraction}) per GPU; only "
            f"{_gib(free)} of {_gib(total)} free beside the old version ({_gib(held)} held)",
        )
    # tensorrt_llm: the KV cache is `fraction` of what is free after weights and buffers.
    fixed = policy.runtime_overhead_bytes + new.weights_bytes
    free_alone = total - fixed
    if free_alone <= 0:
        return SwitchPlan(
            Mode.UNLOAD_FIRST,
            f"the new engine's weights and buffers ({_gib(fixed)}) do not leave KV memory on "
            f"a {_gib(total)} GPU even alone",
        )
    kv_alone = new.fraction * free_alone
    free_beside = free - fixed
    kv_beside = new.fraction * max(0.0, free_beside)
    ratio = kv_beside / kv_alone
    figures = (
        f"per GPU of {_gib(total)}: old version holds {_gib(held)}, new engine needs "
        f"{_gib(fixed)} + KV; KV beside {_gib(kv_beside)} vs {_gib(kv_alone)} alone "
        f"({ratio:.0%}, kv_cache_free_gpu_mem_fraction {new.fraction})"
    )
    if ratio >= policy.min_kv_ratio:
        return SwitchPlan(
            Mode.LOAD_BESIDE, f"fits beside: {figures}", None, int(kv_alone), int(kv_beside)
        )
    if policy.reduced_min_ratio is not None and free_beside > 0:
        # Leave as many bytes free as the engine leaves alone ((1 - f) of its free memory):
        # the headroom its runtime allocations and NCCL (TP > 1) count on.
        headroom = (1 - new.fraction) * free_alone
        kv_reduced = free_beside - headroom
        if kv_reduced >= policy.reduced_min_ratio * kv_alone:
            fraction = kv_reduced / free_beside
            return SwitchPlan(
                Mode.REDUCED_FRACTION,
                f"beside with kv_cache_free_gpu_mem_fraction {fraction:.3f}: KV "
                f"{_gib(kv_reduced)} ({kv_reduced / kv_alone:.0%} of alone, accepted down to "
                f"{policy.reduced_min_ratio:.0%}); {figures}",
                fraction,
                int(kv_alone),
                int(kv_reduced),
            )
    return SwitchPlan(
        Mode.UNLOAD_FIRST,
        f"does not fit beside: {figures}",
        None,
        int(kv_alone),
        int(kv_beside),
    )
