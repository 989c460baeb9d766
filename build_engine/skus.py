"""The SKU catalogue: which GPU (or the CPU) an engine is built for, and the precisions it runs.

Pure data and rules, no I/O. Compute capabilities: NVIDIA's CUDA GPU list
(https://developer.nvidia.com/cuda-gpus). Memory: the vendor data sheets (A10G as sold on AWS g5).
Precision rules (TensorRT-LLM support matrix, docs/source/reference/support-matrix.md; our
facts.md "TensorRT-LLM and quantization"): FP8 needs compute capability >= 8.9 (Ada, Hopper,
Blackwell); Ampere (8.0/8.6) has INT8 SmoothQuant, INT8 weight-only and INT4 AWQ but no FP8;
NVFP4 needs Blackwell (10.x). On SM 100-119 (B200) TensorRT-LLM's engine builder refuses INT8/INT4
weights, an INT8 KV cache and SmoothQuant (NVIDIA/TensorRT-LLM tensorrt_llm/builder.py, build():
`if get_sm_version() >= 100 and get_sm_version() < 120:` raises "INT8/INT4 quantization is not
supported on SM>=100." and "SmoothQuant is not supported on SM>=100."), so those SKUs offer none.
The `cpu` SKU serves fp32, or the ModelOpt fake-quant (simulated) numerics of the PTQ formats
that ModelOpt 0.47 calibrates on CPU (facts.md: FP8 + FP8 KV, INT8 SmoothQuant + INT8 KV,
INT8 weight-only): the precision's effect on quality is visible, its speed is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Every precision the build knows. bf16/fp16: no quantization; the rest are ModelOpt PTQ formats.
GPU_BASE_PRECISIONS: frozenset[str] = frozenset({"bf16", "fp16"})
AMPERE_QUANT: frozenset[str] = frozenset({"int8_sq", "int8_wo", "int4_awq"})
PRECISIONS: tuple[str, ...] = (
    "bf16",
    "fp16",
    "fp32",
    "fp8",
    "int8_sq",
    "int8_wo",
    "int4_awq",
    "nvfp4",
)
# What the CPU reference engine can fake-quantize (triton_models/cpu_engine/fake_quant.py).
CPU_FAKE_QUANT: frozenset[str] = frozenset({"fp8", "int8_sq", "int8_wo"})
# Precisions that serve unquantized weights (no calibrated K/V scales either).
UNQUANTIZED: frozenset[str] = GPU_BASE_PRECISIONS | {"fp32"}
# KV cache dtypes: "auto" = the model's compute dtype (TensorRT-LLM's own meaning of "auto").
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "fp8", "int8")

# Minimum compute capabilities (see module docstring).
FP8_MIN_CC: tuple[int, int] = (8, 9)
BLACKWELL_CC_MAJOR = 10
# Compute capabilities [from, to) whose engines TensorRT-LLM's builder refuses INT8/INT4 weights,
# an INT8 KV cache and SmoothQuant for (module docstring: 100 <= get_sm_version() < 120).
NO_INT_QUANT_CC: tuple[tuple[int, int], tuple[int, int]] = ((10, 0), (12, 0))
NO_INT_QUANT_WHY = (
    "TensorRT-LLM's engine builder refuses {what} on SM 100-119 "
    "(tensorrt_llm/builder.py build(): 'INT8/INT4 quantization is not supported on SM>=100', "
    "'SmoothQuant is not supported on SM>=100')"
)


class SkuError(ValueError):
    """An unknown SKU or a SKU/precision pair that cannot work."""


@dataclass(frozen=True, slots=True)
class Sku:
    name: str
    compute_capability: tuple[int, int] | None  # None for the CPU
    memory_gb: int  # per GPU; 0 for the CPU
    precisions: frozenset[str]
    # Whole `nvidia-smi --query-gpu=name` product names of this SKU, compared normalised
    # (normalise_gpu_name): never substrings, or "NVIDIA L40" would be an L4.
    smi_names: tuple[str, ...] = ()

    @property
    def is_gpu(self) -> bool:
        return self.compute_capability is not None

    @property
    def cc_string(self) -> str:
        """ "8.9" style, or "n/a" for the CPU (what manifest.json records)."""
        cc = self.compute_capability
        return f"{cc[0]}.{cc[1]}" if cc else "n/a"


def refuses_int_quant(cc: tuple[int, int] | None) -> bool:
    """True on the compute capabilities TensorRT-LLM builds no INT8/INT4 engine for."""
    return cc is not None and NO_INT_QUANT_CC[0] <= cc < NO_INT_QUANT_CC[1]


def precisions_for(cc: tuple[int, int]) -> frozenset[str]:
    """Precisions a GPU of compute capability `cc` runs (rules in the module docstring)."""
    allowed = set(GPU_BASE_PRECISIONS)
    if not refuses_int_quant(cc):
        allowed |= AMPERE_QUANT
    if cc >= FP8_MIN_CC:
        allowed.add("fp8")
    if cc[0] == BLACKWELL_CC_MAJOR:
        allowed.add("nvfp4")
    return frozenset(allowed)


def _gpu(name: str, cc: tuple[int, int], memory_gb: int, *smi_names: str) -> Sku:
    return Sku(name, cc, memory_gb, precisions_for(cc), smi_names)


SKUS: dict[str, Sku] = {
    s.name: s
    for s in (
        _gpu("a10g", (8, 6), 24, "A10G"),
        _gpu("a100-40gb", (8, 0), 40, "A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB"),
        _gpu("a100-80gb", (8, 0), 80, "A100-SXM4-80GB", "A100 80GB PCIe", "A100-PCIE-80GB"),
        _gpu("l4", (8, 9), 24, "L4"),
        _gpu("l40s", (8, 9), 48, "L40S"),
        _gpu("h100-sxm", (9, 0), 80, "H100 80GB HBM3", "H100-SXM", "H100 SXM"),
        _gpu("h100-pcie", (9, 0), 80, "H100 PCIe", "H100-PCIE"),
        _gpu("h200", (9, 0), 141, "H200"),
        # B200: 180 GB HBM3e per GPU in DGX B200 (1,440 GB for 8 GPUs, NVIDIA DGX B200 data sheet).
        _gpu("b200", (10, 0), 180, "B200"),
        # The CPU reference engine serves the HF folder in fp32 (triton_models/cpu_engine/runner.py
        # loads it with dtype=torch.float32), optionally with ModelOpt fake-quant on top.
        Sku("cpu", None, 0, frozenset({"fp32"}) | CPU_FAKE_QUANT),
    )
}


def get_sku(name: str) -> Sku:
    try:
        return SKUS[name.lower()]
    except KeyError:
        raise SkuError(f"unknown SKU {name!r}; known: {', '.join(SKUS)}") from None


def check_precision(sku: Sku | str, precision: str) -> Sku:
    """Return the Sku if it can run `precision`; SkuError naming both otherwise."""
    sku = get_sku(sku) if isinstance(sku, str) else sku
    if precision not in PRECISIONS:
        raise SkuError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision not in sku.precisions:
        raise SkuError(
            f"precision {precision!r} is not supported on SKU {sku.name!r} "
            f"(compute capability {sku.cc_string}); "
            f"it supports: {', '.join(sorted(sku.precisions))}" + _why(sku, precision)
        )
    return sku


def kv_cache_dtypes_for(sku: Sku) -> tuple[str, ...]:
    """The KV cache dtypes the SKU offers (for some quantized precision; "auto" always)."""
    return tuple(
        d
        for d in KV_CACHE_DTYPES
        if not (d == "fp8" and "fp8" not in sku.precisions)
        and not (d == "int8" and refuses_int_quant(sku.compute_capability))
    )


def check_kv_cache_dtype(sku: Sku, precision: str, kv_cache_dtype: str) -> None:
    """SkuError unless the KV cache dtype fits the SKU and the weight precision."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise SkuError(
            f"unknown kv cache dtype {kv_cache_dtype!r}; known: {', '.join(KV_CACHE_DTYPES)}"
        )
    if kv_cache_dtype == "int8" and refuses_int_quant(sku.compute_capability):
        raise SkuError(
            f"kv cache dtype 'int8' is not supported on SKU {sku.name!r} "
            f"(compute capability {sku.cc_string}); "
            + NO_INT_QUANT_WHY.format(what="an INT8 KV cache")
        )
    if kv_cache_dtype == "fp8" and "fp8" not in sku.precisions:
        raise SkuError(
            f"kv cache dtype 'fp8' is not supported on SKU {sku.name!r} "
            f"(compute capability {sku.cc_string}); FP8 needs >= 8.9"
        )
    if kv_cache_dtype != "auto" and precision in UNQUANTIZED:
        # A quantized KV cache needs calibrated K/V scales, which only the PTQ step produces.
        raise SkuError(
            f"kv cache dtype {kv_cache_dtype!r} needs a quantized precision (calibrated K/V "
            f"scales), not {precision!r}"
        )


# Vendor words in front of the product name: drivers before ~R470 print "A100-SXM4-40GB" or
# "Tesla T4", newer ones "NVIDIA A100-SXM4-40GB".
_VENDOR_WORDS = frozenset({"nvidia", "tesla"})


def normalise_gpu_name(name: str) -> str:
    """A GPU product name in one spelling: lower case, vendor words dropped, runs of spaces,
    "-" and "_" as one "-". `nvidia-smi`'s "NVIDIA A100 80GB PCIe" and GPU Feature Discovery's
    nvidia.com/gpu.product label "NVIDIA-A100-80GB-PCIe" (spaces replaced by "-") become the
    same "a100-80gb-pcie"."""
    words = [w for w in re.split(r"[\s_-]+", name.strip().lower()) if w]
    while words and words[0] in _VENDOR_WORDS:
        words.pop(0)
    return "-".join(words)


def sku_for_gpu(smi_name: str, cc: tuple[int, int]) -> Sku | None:
    """The catalogue SKU whose whole product name (normalised) and compute capability are
    those of an `nvidia-smi` GPU, if any. Whole names only: "NVIDIA L40" is not the `l4`,
    "NVIDIA GH200 480GB" not the `h200`, "NVIDIA GB200" not the `b200`."""
    wanted = normalise_gpu_name(smi_name)
    for sku in SKUS.values():
        if sku.compute_capability == cc and wanted in _normalised_names(sku):
            return sku
    return None


def _normalised_names(sku: Sku) -> frozenset[str]:
    return frozenset(normalise_gpu_name(n) for n in sku.smi_names)


def _why(sku: Sku, precision: str) -> str:
    if not sku.is_gpu:
        return (
            " (the CPU reference engine serves the HF model in fp32 or ModelOpt fake-quant "
            "of fp8, int8_sq, int8_wo)"
        )
    if precision == "fp8":
        return "; FP8 needs compute capability >= 8.9 (Ada, Hopper, Blackwell)"
    if precision == "nvfp4":
        return "; NVFP4 needs Blackwell (compute capability 10.x)"
    if precision == "fp32":
        return "; GPU engines are built in bf16/fp16 or a quantized format"
    if precision in AMPERE_QUANT and refuses_int_quant(sku.compute_capability):
        what = "SmoothQuant" if precision == "int8_sq" else "INT8/INT4 weights"
        return "; " + NO_INT_QUANT_WHY.format(what=what)
    return ""
