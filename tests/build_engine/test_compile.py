"""compile: refusals without a matching GPU, and the exact trtllm-build call (detector injected)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from autoglm.build_engine.compile import CompileError, compile_engine
from autoglm.build_engine.gpus import GpuInfo, detect_gpus, parse_smi
from autoglm.build_engine.plan import BuildPlan, trtllm_build_argv

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 81559)
L40S = GpuInfo("NVIDIA L40S", (8, 9), 46068)


def make_plan(tmp_path: Path, **kw: object) -> BuildPlan:
    base: dict[str, object] = {
        "model_dir": tmp_path / "model",
        "sku": "h100-sxm",
        "precision": "fp8",
        "kv_cache_dtype": "fp8",
        "output_dir": tmp_path / "out",
    }
    base.update(kw)
    plan = BuildPlan(**base)  # type: ignore[arg-type]
    plan.checkpoint_dir.mkdir(parents=True)
    (plan.checkpoint_dir / "config.json").write_text("{}")
    return plan


def never_run(argv: Sequence[str]) -> int:
    raise AssertionError(f"must not run {argv}")


def test_refuses_without_gpu(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=r"no NVIDIA GPU found.*h100-sxm.*9\.0"):
        compile_engine(make_plan(tmp_path), detector=lambda: (), runner=never_run)


def test_refuses_other_compute_capability(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=r"differs from SKU h100-sxm's 9\.0: NVIDIA L40S .*8\.9"):
        compile_engine(make_plan(tmp_path), detector=lambda: (L40S,), runner=never_run)


def test_refuses_too_few_gpus(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="needs 2 GPUs, found 1"):
        compile_engine(make_plan(tmp_path, tp=2), detector=lambda: (H100,), runner=never_run)


def test_refuses_cpu_sku(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, sku="cpu", precision="fp32", kv_cache_dtype="auto")
    with pytest.raises(CompileError, match="SKU 'cpu' has no engine"):
        compile_engine(plan, detector=lambda: (), runner=never_run)


def test_runs_exact_command_on_matching_gpu(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    calls: list[tuple[str, ...]] = []

    def fake_build(argv: Sequence[str]) -> int:
        calls.append(tuple(argv))
        plan.engine_dir.mkdir(parents=True)
        (plan.engine_dir / "rank0.engine").write_bytes(b"plan")
        return 0

    result = compile_engine(plan, detector=lambda: (H100,), runner=fake_build)
    assert calls == [trtllm_build_argv(plan)]
    assert calls[0][:5] == (
        "trtllm-build",
        "--checkpoint_dir",
        str(plan.checkpoint_dir),
        "--output_dir",
        str(plan.engine_dir),
    )
    assert result.gpus == (H100,)
    # tensorrt / tensorrt_llm cannot be installed here: recorded as n/a.
    assert (result.tensorrt_version, result.tensorrt_llm_version) == ("n/a", "n/a")


def test_failed_build_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="exited with status 3"):
        compile_engine(make_plan(tmp_path), detector=lambda: (H100,), runner=lambda argv: 3)


def test_parse_smi() -> None:
    text = "NVIDIA H100 80GB HBM3, 9.0, 81559 MiB\nNVIDIA H100 80GB HBM3, 9.0, 81559 MiB\n"
    assert parse_smi(text) == (H100, H100)


def test_detect_gpus_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert detect_gpus() == ()
