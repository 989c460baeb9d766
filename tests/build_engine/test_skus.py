"""SKU catalogue and precision rules (pure)."""

from __future__ import annotations

import pytest

from autoglm.build_engine.skus import (
    SKUS,
    SkuError,
    check_kv_cache_dtype,
    check_precision,
    get_sku,
    sku_for_gpu,
)

EXPECTED = {
    "a10g",
    "a100-40gb",
    "a100-80gb",
    "l4",
    "l40s",
    "h100-sxm",
    "h100-pcie",
    "h200",
    "b200",
    "cpu",
}


def test_catalogue_complete() -> None:
    assert set(SKUS) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED - {"cpu"}))
def test_bf16_fp16_everywhere_on_gpu(name: str) -> None:
    for precision in ("bf16", "fp16"):
        check_precision(name, precision)


@pytest.mark.parametrize("name", ["a10g", "a100-40gb", "a100-80gb"])
def test_ampere_int_formats_but_no_fp8(name: str) -> None:
    for precision in ("int8_sq", "int8_wo", "int4_awq"):
        check_precision(name, precision)
    with pytest.raises(SkuError, match=rf"'fp8'.*{name}.*8\.[06].*>= 8\.9"):
        check_precision(name, "fp8")


@pytest.mark.parametrize("name", ["l4", "l40s", "h100-sxm", "h100-pcie", "h200", "b200"])
def test_fp8_from_cc_8_9(name: str) -> None:
    assert get_sku(name).compute_capability >= (8, 9)
    check_precision(name, "fp8")


def test_nvfp4_only_blackwell() -> None:
    check_precision("b200", "nvfp4")
    for name in EXPECTED - {"b200"}:
        with pytest.raises(SkuError, match=f"'nvfp4'.*'{name}'"):
            check_precision(name, "nvfp4")


def test_cpu_is_fp32_or_fake_quant() -> None:
    assert not get_sku("cpu").is_gpu
    assert get_sku("cpu").precisions == {"fp32", "fp8", "int8_sq", "int8_wo"}
    for precision in ("fp32", "fp8", "int8_sq", "int8_wo"):
        check_precision("cpu", precision)
    with pytest.raises(SkuError, match=r"'bf16'.*'cpu'.*fake-quant"):
        check_precision("cpu", "bf16")
    with pytest.raises(SkuError, match=r"'int4_awq'.*'cpu'"):
        check_precision("cpu", "int4_awq")


def test_unknown_names() -> None:
    with pytest.raises(SkuError, match=r"unknown SKU 'v100'"):
        get_sku("v100")
    with pytest.raises(SkuError, match=r"unknown precision 'int3'"):
        check_precision("h100-sxm", "int3")


def test_kv_cache_rules() -> None:
    check_kv_cache_dtype(get_sku("h100-sxm"), "fp8", "fp8")
    check_kv_cache_dtype(get_sku("a100-80gb"), "int8_sq", "int8")
    with pytest.raises(SkuError, match=r"'fp8'.*a10g"):
        check_kv_cache_dtype(get_sku("a10g"), "int8_sq", "fp8")
    with pytest.raises(SkuError, match=r"quantized precision"):
        check_kv_cache_dtype(get_sku("h100-sxm"), "bf16", "fp8")
    # The CPU fake-quantizes K/V too (ModelOpt's calibrated bmm quantizers), never for fp32.
    check_kv_cache_dtype(get_sku("cpu"), "fp8", "fp8")
    check_kv_cache_dtype(get_sku("cpu"), "int8_sq", "int8")
    with pytest.raises(SkuError, match=r"quantized precision.*'fp32'"):
        check_kv_cache_dtype(get_sku("cpu"), "fp32", "fp8")


@pytest.mark.parametrize(
    ("smi", "cc", "sku"),
    [
        ("NVIDIA H100 80GB HBM3", (9, 0), "h100-sxm"),
        ("NVIDIA H100 PCIe", (9, 0), "h100-pcie"),
        ("NVIDIA L40S", (8, 9), "l40s"),
        ("NVIDIA L4", (8, 9), "l4"),
        ("NVIDIA A10G", (8, 6), "a10g"),
        ("NVIDIA A100-SXM4-80GB", (8, 0), "a100-80gb"),
        ("NVIDIA B200", (10, 0), "b200"),
        ("NVIDIA A100 80GB PCIe", (8, 0), "a100-80gb"),
        ("NVIDIA A100-PCIE-40GB", (8, 0), "a100-40gb"),
        ("NVIDIA H200", (9, 0), "h200"),
        ("Tesla T4", (7, 5), None),
        # Older drivers print no "NVIDIA " prefix; GPU Feature Discovery's nvidia.com/gpu.product
        # label is the same name with spaces replaced by "-".
        ("A100-SXM4-40GB", (8, 0), "a100-40gb"),
        ("NVIDIA-A100-80GB-PCIe", (8, 0), "a100-80gb"),
        ("NVIDIA-H100-80GB-HBM3", (9, 0), "h100-sxm"),
        ("  nvidia   l40s ", (8, 9), "l40s"),
    ],
)
def test_sku_for_gpu(smi: str, cc: tuple[int, int], sku: str | None) -> None:
    found = sku_for_gpu(smi, cc)
    assert (found.name if found else None) == sku


@pytest.mark.parametrize(
    ("smi", "cc"),
    [
        # Same compute capability as a catalogue SKU, a name that contains its name: another GPU.
        ("NVIDIA L40", (8, 9)),  # 48 GB, not the 24 GB L4
        ("NVIDIA GH200 480GB", (9, 0)),  # Grace Hopper, not an H200
        ("NVIDIA H200 NVL", (9, 0)),
        ("NVIDIA H100 NVL", (9, 0)),
        ("NVIDIA GB200", (10, 0)),
        ("NVIDIA A10", (8, 6)),
        ("NVIDIA A100-SXM4-80GB-MIG-1g.10gb", (8, 0)),
        ("NVIDIA L40S", (8, 6)),  # a name with the wrong compute capability
    ],
)
def test_sku_for_gpu_matches_whole_names_only(smi: str, cc: tuple[int, int]) -> None:
    assert sku_for_gpu(smi, cc) is None
