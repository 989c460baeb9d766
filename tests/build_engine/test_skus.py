"""SKU catalogue and precision rules (pure)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from autoglm.build_engine.cli import main
from autoglm.build_engine.plan import BuildPlan, PlanError
from autoglm.build_engine.skus import (
    SKUS,
    SkuError,
    check_kv_cache_dtype,
    check_precision,
    get_sku,
    kv_cache_dtypes_for,
    precisions_for,
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


@pytest.mark.parametrize("name", ["l4", "l40s", "h100-sxm", "h100-pcie", "h200"])
def test_int_formats_on_ada_and_hopper(name: str) -> None:
    for precision in ("int8_sq", "int8_wo", "int4_awq"):
        check_precision(name, precision)
    check_kv_cache_dtype(get_sku(name), "int8_sq", "int8")


def test_b200_precisions_and_kv_cache_dtypes() -> None:
    """TensorRT-LLM's builder refuses INT8/INT4 weights, an INT8 KV cache and SmoothQuant on
    SM 100-119 (tensorrt_llm/builder.py build()): the catalogue does not offer them."""
    b200 = get_sku("b200")
    assert b200.precisions == {"bf16", "fp16", "fp8", "nvfp4"}
    assert kv_cache_dtypes_for(b200) == ("auto", "fp8")
    for precision in ("int8_sq", "int8_wo", "int4_awq"):
        with pytest.raises(SkuError, match=rf"'{precision}'.*'b200'.*10\.0.*SM 100"):
            check_precision("b200", precision)
    with pytest.raises(SkuError, match=r"'int8'.*'b200'.*10\.0.*INT8 KV cache"):
        check_kv_cache_dtype(b200, "fp8", "int8")
    check_kv_cache_dtype(b200, "fp8", "fp8")
    check_kv_cache_dtype(b200, "nvfp4", "fp8")


@pytest.mark.parametrize(
    ("cc", "has_int"),
    [
        ((8, 0), True),
        ((9, 0), True),
        ((10, 0), False),
        ((10, 3), False),
        ((11, 0), False),
        ((12, 0), True),
    ],
)
def test_int_formats_by_compute_capability(cc: tuple[int, int], has_int: bool) -> None:
    # builder.py's check is `100 <= get_sm_version() < 120`: SM 12.x is not refused there.
    assert ({"int8_sq", "int8_wo", "int4_awq"} <= precisions_for(cc)) is has_int


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


@pytest.mark.parametrize(
    ("precision", "kv", "why"),
    [
        ("int8_sq", "auto", r"'int8_sq'.*'b200'.*SmoothQuant"),
        ("int8_wo", "auto", r"'int8_wo'.*'b200'.*INT8/INT4"),
        ("int4_awq", "auto", r"'int4_awq'.*'b200'.*INT8/INT4"),
        ("fp8", "int8", r"'int8'.*'b200'.*INT8 KV cache"),
    ],
)
def test_b200_plan_refused_naming_sku_and_why(
    tmp_path: Path, precision: str, kv: str, why: str
) -> None:
    plan = BuildPlan(
        model_dir=tmp_path / "model",
        sku="b200",
        precision=precision,
        kv_cache_dtype=kv,
        output_dir=tmp_path / "out",
    )
    with pytest.raises(PlanError, match=why + r".*tensorrt_llm/builder\.py"):
        plan.validate()
    out = io.StringIO()
    argv = ["plan", "--model-dir", str(tmp_path / "model"), "--sku", "b200"]
    argv += ["--precision", precision, "--kv-cache-dtype", kv, "--output-dir", str(tmp_path)]
    assert main(argv, Console(file=out, width=400)) == 2
    assert re.search(why, out.getvalue()), out.getvalue()
    assert not (tmp_path / "plan.json").exists()


def test_skus_command_lists_kv_cache_dtypes() -> None:
    out = io.StringIO()
    assert main(["skus"], Console(file=out, width=400)) == 0
    rows = {line.split("│")[1].strip(): line for line in out.getvalue().splitlines() if "│" in line}
    assert "int8" not in rows["b200"].split("│")[5] and "fp8" in rows["b200"].split("│")[5]
    assert "int8_sq" not in rows["b200"]
    assert "int8" in rows["h100-sxm"].split("│")[5]
