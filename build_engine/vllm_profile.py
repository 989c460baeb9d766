"""AutoGLM-Phone-9B on Triton's vLLM backend: a build profile per SKU (written on paper: no GPU).

TensorRT-LLM cannot build GLM-4.1V (facts.md), so this model is served by vLLM inside
`tritonserver:<yy.mm>-vllm-python-py3`; there is nothing to compile, and the "build" is:
1. the checkpoint verified by sha256 (`verify_checkpoint`);
2. the precision for the SKU (`choose_precision`);
3. a memory fit (`memory_fit`): weights + KV cache for `max_num_seqs` full contexts + the
   vision encoder's activations + runtime overhead against GPU memory x
   `gpu_memory_utilization`, refused with the numbers and the knob to turn;
4. the engine settings of the SKU (`SKU_SETTINGS`), rendered into a Triton model repository
   (triton_models/vllm.py) as a new version carrying a manifest (build_engine/manifest.py,
   `engine: "vllm"`).

Pure functions here; `install_vllm_version` and the sha256 helpers do the I/O.

Sources (vLLM 0.19.0 = the vLLM of tritonserver:26.04-vllm-python-py3 per Triton's
compatibility matrix; read in the PyPI wheel vllm-0.19.0, commit 2a69949bd):
- FP8: `quantization="fp8"` on a 16-bit checkpoint is online FP8 (per-tensor weight scales,
  dynamic activation scales; vllm/model_executor/layers/quantization/fp8.py
  `Fp8OnlineLinearMethod`, weights created on the meta device and quantized layer by layer while
  loading, so the 16-bit model is never whole on the GPU). FP8 math needs compute capability
  >= 8.9 (vllm/platforms/cuda.py `supports_fp8` = has_device_capability(89)); below it vLLM
  falls back to weight-only FP8 through its Marlin kernel (model_executor/kernels/linear/
  scaled_mm/marlin.py), FP8 storage with 16-bit math. This profile serves bf16 there (A100:
  the 16-bit model fits 40 and 80 GB, and weight-only FP8 gives no FP8 speed).
- The vision tower is quantized too: glm4_1v.py passes `quant_config` to
  Glm4vVisionTransformer and online Fp8Config has no ignored layers, so every linear layer of
  the vision blocks and the merger runs FP8 (embeddings, lm_head, norms and convolutions stay
  bf16). Keeping the vision tower in bf16 takes an offline FP8 checkpoint that lists it as
  ignored (ModelOpt / llm-compressor): not done here.
- Tensor parallel: vLLM splits the vision attention heads over the TP group
  (glm4_1v.py Glm4vVisionAttention: divide(num_heads, tp_size)) and the language model's heads
  likewise; GLM-4.1V has 12 vision heads and 32 text heads (2 KV heads, replicated when TP > 2),
  so TP is 1, 2 or 4.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from autoglm.build_engine.glm41v_shape import Glm4vShape, ParamCounts
from autoglm.build_engine.skus import FP8_MIN_CC, Sku, SkuError, get_sku
from autoglm.triton_models.vllm import (
    AUTOGLM_MAX_IMAGES,
    AUTOGLM_MAX_MODEL_LEN,
    AUTOGLM_MAX_PIXELS,
    VllmEngineConfig,
)

ENGINE = "vllm"
MODEL_NAME = "autoglm-phone-9b"
GIB = 1 << 30
# nvidia-smi reports less memory than the SKU's nominal size: 23,034 MiB on a "24 GB" L4
# (0.937 x 24 GiB), 81,559 MiB on an "80 GB" H100. Without a measured total the fit assumes
# 0.93 x the nominal GiB; on a GPU host pass the measured total (`--gpu-memory-mib`).
NOMINAL_TO_USABLE = 0.93


class VllmProfileError(ValueError):
    """A profile that cannot work on the SKU (the message says why and which knob to turn)."""


# The model's shape and parameter counts: glm41v_shape.py.


# ---- SKUs, precision, settings -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkuSettings:
    """The engine settings a SKU gets by default (each one a `vllm-profile` flag)."""

    tp: int
    max_num_seqs: int
    gpu_memory_utilization: float = 0.90


# max_num_seqs: requests in flight at once, each allowed the full 25,480-token context
# without preemption (the memory fit below counts a whole context for each). A10G: one
# 24 GB Ampere GPU cannot hold the bf16 weights with any KV cache, so its profile is TP 2
# (AWS g5.12xlarge has 4). The numbers are what `memory_fit` accepts with margin; a GPU host
# confirms them (`vllm:num_requests_running`, `vllm:kv_cache_usage_perc`).
SKU_SETTINGS: Mapping[str, SkuSettings] = {
    "a10g": SkuSettings(tp=2, max_num_seqs=8),
    "a100-40gb": SkuSettings(tp=1, max_num_seqs=8),
    "a100-80gb": SkuSettings(tp=1, max_num_seqs=32),
    "l4": SkuSettings(tp=1, max_num_seqs=4),
    "l40s": SkuSettings(tp=1, max_num_seqs=16),
    "h100-sxm": SkuSettings(tp=1, max_num_seqs=32),
    "h100-pcie": SkuSettings(tp=1, max_num_seqs=32),
    "h200": SkuSettings(tp=1, max_num_seqs=64),
    "b200": SkuSettings(tp=1, max_num_seqs=96),
}
PRECISIONS: tuple[str, ...] = ("fp8", "bf16")


def choose_precision(sku: Sku) -> str:
    """fp8 where vLLM does FP8 math (compute capability >= 8.9), bf16 elsewhere."""
    if sku.compute_capability is None:
        raise VllmProfileError(_cpu_refusal(sku))
    return "fp8" if sku.compute_capability >= FP8_MIN_CC else "bf16"


def check_precision(sku: Sku, precision: str, kv_cache_dtype: str) -> None:
    if sku.compute_capability is None:
        raise VllmProfileError(_cpu_refusal(sku))
    if precision not in PRECISIONS:
        raise VllmProfileError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    fp8_math = sku.compute_capability >= FP8_MIN_CC
    if precision == "fp8" and not fp8_math:
        raise VllmProfileError(
            f"precision 'fp8' on {sku.name} (compute {sku.cc_string}): vLLM runs FP8 math only "
            "on compute >= 8.9 and falls back to weight-only FP8 (Marlin) below it; this profile "
            "serves bf16 there (--precision bf16)"
        )
    if kv_cache_dtype == "fp8" and not fp8_math:
        raise VllmProfileError(
            f"kv cache dtype 'fp8' on {sku.name} (compute {sku.cc_string}): FP8 needs >= 8.9"
        )
    if kv_cache_dtype not in ("auto", "fp8"):
        raise VllmProfileError(f"kv cache dtype: {kv_cache_dtype!r} is not 'auto' or 'fp8'")


def check_tp(shape: Glm4vShape, tp: int) -> None:
    for what, heads in (
        ("text attention heads", shape.num_attention_heads),
        ("vision attention heads", shape.vision_heads),
    ):
        if tp < 1 or heads % tp:
            raise VllmProfileError(
                f"tp: {tp} does not divide the {heads} {what} (vLLM splits them over the TP "
                "group); use 1, 2 or 4"
            )


def _cpu_refusal(sku: Sku) -> str:
    return (
        f"SKU {sku.name!r}: the vLLM profile is for GPUs; on the CPU a tiny random-weight "
        "GLM-4.1V is served by the CPU reference engine for vision-language models"
    )


# ---- memory ------------------------------------------------------------------------------


# Estimates of what vLLM's memory profile run sees besides the weights and the KV cache (no
# GPU here to measure them; a GPU host reads the real split from vLLM's start-up log: "model
# weights took", "non_torch_memory", "activation peak", "Available KV cache memory").
CUDA_GRAPHS_BYTES = 1 * GIB  # captured graphs when enforce_eager is false
NON_TORCH_BYTES = GIB // 2  # CUDA context extras, cuBLAS workspaces
NCCL_BYTES = GIB // 2  # NCCL buffers with TP > 1
# The sampler's dummy run: fp32 logits over the whole vocabulary for every sequence, with
# room for probabilities and sorting (x 3).
SAMPLER_COPIES = 3


@dataclass(frozen=True, slots=True)
class FitRequest:
    """What must fit on each GPU."""

    sku: str
    precision: str
    kv_cache_dtype: str
    tp: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    max_pixels: int = AUTOGLM_MAX_PIXELS
    enforce_eager: bool = False
    gpu_memory_bytes: int | None = None  # measured total per GPU, if known


@dataclass(frozen=True, slots=True)
class Fit:
    """Bytes per GPU; `ok` when need <= budget."""

    gpu_total: int
    budget: int
    weights: int
    kv_cache: int
    kv_per_token: int
    activations: int
    vision: int
    runtime: int

    @property
    def need(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.vision + self.runtime

    @property
    def ok(self) -> bool:
        return self.need <= self.budget

    @property
    def fixed(self) -> int:
        """Everything but the KV cache."""
        return self.need - self.kv_cache

    def to_dict(self) -> dict[str, object]:
        gib = {
            k: round(getattr(self, k) / GIB, 2)
            for k in (
                "gpu_total",
                "budget",
                "weights",
                "kv_cache",
                "activations",
                "vision",
                "runtime",
                "need",
            )
        }
        return {"gib": gib, "kv_bytes_per_token": self.kv_per_token, "ok": self.ok}


def memory_fit(shape: Glm4vShape, params: ParamCounts, r: FitRequest) -> Fit:
    """The memory each GPU needs for `r`, by part (pure arithmetic, see the constants)."""
    sku = get_sku(r.sku)
    total = r.gpu_memory_bytes or int(sku.memory_gb * GIB * NOMINAL_TO_USABLE)
    kv_bytes = 1 if r.kv_cache_dtype == "fp8" else 2
    per_token = shape.kv_bytes_per_token(tp=r.tp, kv_bytes=kv_bytes)
    # A prefill chunk of max_num_batched_tokens tokens through one decoder layer: the MLP's
    # gate/up output (2 x intermediate, split over TP) and a few hidden-size buffers, bf16.
    lm = r.max_num_batched_tokens * (2 * shape.intermediate_size // r.tp + 4 * shape.hidden_size)
    sampler = r.max_num_seqs * shape.vocab_size * 4 * SAMPLER_COPIES
    # The largest image through one vision block (vLLM's ViT attention is FlashAttention /
    # memory-efficient SDPA: no patches^2 score matrix): residual + qkv + attention output +
    # MLP gate/up + MLP output, unsplit (conservative), bf16; plus its merged embeddings in the
    # encoder cache, sized for max(max_num_batched_tokens, one image).
    patches = shape.image_patches(r.max_pixels)
    block = patches * (6 * shape.vision_hidden + 3 * shape.vision_out_hidden) * 2
    cache_tokens = max(r.max_num_batched_tokens, shape.image_tokens(r.max_pixels))
    vision = block + cache_tokens * shape.hidden_size * 2
    runtime = NON_TORCH_BYTES + (0 if r.enforce_eager else CUDA_GRAPHS_BYTES)
    runtime += NCCL_BYTES if r.tp > 1 else 0
    return Fit(
        gpu_total=total,
        budget=int(total * r.gpu_memory_utilization),
        weights=params.weight_bytes(r.precision) // r.tp,
        kv_cache=r.max_num_seqs * r.max_model_len * per_token,
        kv_per_token=per_token,
        activations=lm * 2 + sampler,
        vision=vision,
        runtime=runtime,
    )


def _gib(n: int) -> str:
    """Bytes as GiB for messages."""
    return f"{n / GIB:.2f} GiB"


def check_fit(fit: Fit, r: FitRequest) -> None:
    """VllmProfileError with the numbers and the knobs when `fit` does not fit."""
    if fit.ok:
        return
    head = (
        f"{MODEL_NAME} does not fit {'one' if r.tp == 1 else f'each of {r.tp}'} {r.sku} "
        f"(budget {_gib(fit.budget)} = {_gib(fit.gpu_total)} x gpu_memory_utilization "
        f"{r.gpu_memory_utilization:.2f}): needs {_gib(fit.need)} = weights "
        f"{_gib(fit.weights)} ({r.precision}) + KV cache {_gib(fit.kv_cache)} "
        f"({r.max_num_seqs} seqs x {r.max_model_len} tokens x {fit.kv_per_token / 1024:.1f} "
        f"KiB) + activations {_gib(fit.activations)} + vision encoder {_gib(fit.vision)} + "
        f"runtime {_gib(fit.runtime)}."
    )
    room = fit.budget - fit.fixed
    knobs: list[str] = []
    if room > 0:
        seqs = room // (r.max_model_len * fit.kv_per_token)
        length = room // (r.max_num_seqs * fit.kv_per_token)
        if seqs >= 1:
            knobs.append(f"--max-num-seqs {seqs} (or fewer)")
        if length >= 1:
            knobs.append(f"--max-model-len {length} (or less) at {r.max_num_seqs} seqs")
    else:
        knobs.append("the weights and buffers alone exceed the budget")
    if r.tp < 4:
        knobs.append(f"--tp {r.tp * 2} (more GPUs)")
    if r.precision == "bf16" and r.sku in _FP8_SKUS:
        knobs.append("--precision fp8")
    if r.gpu_memory_utilization < 0.95:
        knobs.append(f"a higher --gpu-memory-utilization (now {r.gpu_memory_utilization:.2f})")
    raise VllmProfileError(head + " Turn a knob: " + "; ".join(knobs))


_FP8_SKUS = frozenset(
    n for n, s in SKU_SETTINGS.items() if (get_sku(n).compute_capability or (0, 0)) >= FP8_MIN_CC
)


# ---- the profile -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VllmProfile:
    """A validated profile: the engine config to render, the fit and where it came from."""

    sku: Sku
    engine: VllmEngineConfig
    fit: Fit
    precision: str
    model: str  # the checkpoint folder's name (manifest Profile.model)


def plan_profile(
    *,
    sku_name: str,
    model_dir: Path,
    shape: Glm4vShape,
    params: ParamCounts,
    tp: int | None = None,
    precision: str | None = None,
    kv_cache_dtype: str = "auto",
    max_model_len: int = AUTOGLM_MAX_MODEL_LEN,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int = 8192,
    gpu_memory_utilization: float | None = None,
    max_images: int = AUTOGLM_MAX_IMAGES,
    max_pixels: int = AUTOGLM_MAX_PIXELS,
    gpu_memory_bytes: int | None = None,
    model_name: str = MODEL_NAME,
    extra: Mapping[str, object] | None = None,
) -> VllmProfile:
    """The SKU's profile with any overrides, or VllmProfileError saying why not (pure)."""
    try:
        sku = get_sku(sku_name)
    except SkuError as exc:
        raise VllmProfileError(str(exc)) from None
    if not sku.is_gpu:
        raise VllmProfileError(_cpu_refusal(sku))
    defaults = SKU_SETTINGS[sku.name]
    tp = defaults.tp if tp is None else tp
    precision = choose_precision(sku) if precision is None else precision
    check_precision(sku, precision, kv_cache_dtype)
    check_tp(shape, tp)
    if max_model_len > shape.max_position_embeddings:
        raise VllmProfileError(
            f"max_model_len: {max_model_len} exceeds the model's max_position_embeddings "
            f"({shape.max_position_embeddings})"
        )
    request = FitRequest(
        sku=sku.name,
        precision=precision,
        kv_cache_dtype=kv_cache_dtype,
        tp=tp,
        max_model_len=max_model_len,
        max_num_seqs=defaults.max_num_seqs if max_num_seqs is None else max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        gpu_memory_utilization=(
            defaults.gpu_memory_utilization
            if gpu_memory_utilization is None
            else gpu_memory_utilization
        ),
        max_pixels=max_pixels,
        gpu_memory_bytes=gpu_memory_bytes,
    )
    if request.max_num_seqs < 1 or request.max_num_batched_tokens < 1:
        raise VllmProfileError("max_num_seqs and max_num_batched_tokens must be >= 1")
    if not 0 < request.gpu_memory_utilization <= 1:
        raise VllmProfileError(
            f"gpu_memory_utilization: {request.gpu_memory_utilization} must be in (0, 1]"
        )
    fit = memory_fit(shape, params, request)
    check_fit(fit, request)
    engine = VllmEngineConfig(
        model_dir=model_dir,
        model_name=model_name,
        max_model_len=max_model_len,
        max_images=max_images,
        max_pixels=max_pixels,
        tensor_parallel_size=tp,
        gpu_memory_utilization=request.gpu_memory_utilization,
        max_num_seqs=request.max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        dtype="bfloat16",
        quantization="fp8" if precision == "fp8" else None,
        kv_cache_dtype=kv_cache_dtype,
        extra=dict(extra or {}),
    )
    return VllmProfile(sku=sku, engine=engine, fit=fit, precision=precision, model=model_dir.name)


def with_version(profile: VllmProfile, version: int) -> VllmProfile:
    return replace(profile, engine=replace(profile.engine, version=version))
