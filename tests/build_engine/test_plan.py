"""BuildPlan validation and the exact build steps (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.build_engine import plan as plan_mod
from autoglm.build_engine.plan import BuildPlan, PlanError, steps, trtllm_build_argv

OUT = Path("/out")


def make(**kw: object) -> BuildPlan:
    base: dict[str, object] = {
        "model_dir": Path("/models/SmolLM2"),
        "sku": "h100-sxm",
        "precision": "fp8",
        "kv_cache_dtype": "fp8",
        "output_dir": OUT,
    }
    base.update(kw)
    return BuildPlan(**base)  # type: ignore[arg-type]


def test_trtllm_build_fp8_exact() -> None:
    assert trtllm_build_argv(make(tp=2)) == (
        "trtllm-build",
        "--checkpoint_dir", "/out/checkpoint",
        "--output_dir", "/out/engine",
        "--gemm_plugin", "auto",
        "--gpt_attention_plugin", "auto",
        "--kv_cache_type", "paged",
        "--use_paged_context_fmha", "enable",
        "--remove_input_padding", "enable",
        "--use_fp8_context_fmha", "enable",
        "--max_batch_size", "8",
        "--max_input_len", "1024",
        "--max_seq_len", "2048",
        "--max_num_tokens", "4096",
        "--max_beam_width", "1",
        "--workers", "2",
        "--input_timing_cache", "/out/timing.cache",
        "--output_timing_cache", "/out/timing.cache",
        "--log_level", "info",
    )  # fmt: skip


def test_trtllm_build_bf16_throughput() -> None:
    argv = trtllm_build_argv(make(precision="bf16", kv_cache_dtype="auto", profile="throughput"))
    assert "--use_fp8_context_fmha" not in argv
    assert argv[argv.index("--multiple_profiles") + 1] == "enable"


def test_steps_order_and_commands() -> None:
    p = make(model_repo=Path("/repo"))
    got = steps(p, python="python3")
    assert [s.name for s in got] == ["quantize", "quality", "compile", "install"]
    entry = ("python3", "-m", "autoglm.build_engine.cli")
    assert got[0].argv == (*entry, "quantize", "--plan", "/out/plan.json")
    assert got[1].argv == (*entry, "quality", "--plan", "/out/plan.json")
    assert got[2].argv == trtllm_build_argv(p) and got[2].gpu_only
    assert got[3].argv == (*entry, "install", "--plan", "/out/plan.json")


def test_cpu_plan_only_installs() -> None:
    p = make(sku="cpu", precision="fp32", kv_cache_dtype="auto", model_repo=Path("/repo"))
    assert [s.name for s in steps(p)] == ["install"]
    assert not p.is_cpu_fake_quant


def test_cpu_fake_quant_plan_quantizes_gates_installs() -> None:
    p = make(sku="cpu", precision="fp8", kv_cache_dtype="fp8", model_repo=Path("/repo"))
    got = steps(p)
    assert [s.name for s in got] == ["quantize", "quality", "install"]
    assert p.is_cpu_fake_quant and "fake-quant" in got[0].note
    assert p.fake_quant_dir == p.output_dir / "fake_quant"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sku": "a100-80gb"}, "'fp8' is not supported on SKU 'a100-80gb'"),
        ({"tp": 0}, "tp: 0 must be an integer >= 1"),
        ({"profile": "fast"}, "profile: 'fast'"),
        ({"max_input_len": 4096}, "max_input_len .4096. must be <= max_seq_len"),
        ({"max_num_tokens": 512}, "max_num_tokens .512. must be >= max_input_len"),
        ({"sku": "cpu", "precision": "fp32", "kv_cache_dtype": "auto", "tp": 2}, "tp/pp"),
    ],
)
def test_validation(change: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        make(**change).validate()


def test_save_load_roundtrip(tmp_path: Path) -> None:
    p = make(output_dir=tmp_path, model_repo=tmp_path / "repo", calib_path=tmp_path / "c.txt")
    path = plan_mod.save(p)
    assert plan_mod.load(path) == p


def test_load_rejects_unknown_fields(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text('{"bogus": 1}')
    with pytest.raises(PlanError, match="unknown plan fields: bogus"):
        plan_mod.load(tmp_path / "plan.json")
