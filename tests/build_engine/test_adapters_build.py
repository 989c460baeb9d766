"""The engine build for LoRA adapters: trtllm-build's LoRA flags from the plan (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from autoglm.build_engine import plan as plan_mod
from autoglm.build_engine.cli import main
from autoglm.build_engine.plan import BuildPlan, PlanError, trtllm_build_argv


def make(**kw: object) -> BuildPlan:
    base: dict[str, object] = {
        "model_dir": Path("/models/SmolLM2"),
        "sku": "h100-sxm",
        "precision": "fp16",
        "output_dir": Path("/out"),
    }
    base.update(kw)
    return BuildPlan(**base)  # type: ignore[arg-type]


def test_no_lora_by_default() -> None:
    argv = trtllm_build_argv(make())
    assert not [a for a in argv if "lora" in a]


def test_lora_flags() -> None:
    plan = make(max_lora_rank=16, lora_target_modules=("attn_q", "attn_v", "attn_dense"))
    plan.validate()
    argv = trtllm_build_argv(plan)
    i = argv.index("--lora_plugin")
    assert argv[i:] == (
        "--lora_plugin", "auto",
        "--max_lora_rank", "16",
        "--lora_target_modules", "attn_q", "attn_v", "attn_dense",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("rank", "modules", "field"),
    [
        (-1, (), "max_lora_rank"),
        (16, (), "lora_target_modules"),
        (0, ("attn_q",), "lora_target_modules"),
        (16, ("q_proj",), "lora_target_modules: 'q_proj'"),
        (16, ("attn_q", "attn_q"), "lora_target_modules"),
    ],
)
def test_bad_lora_fields_are_named(rank: int, modules: tuple[str, ...], field: str) -> None:
    with pytest.raises(PlanError, match=field):
        make(max_lora_rank=rank, lora_target_modules=modules).validate()


def test_plan_json_round_trip(tmp_path: Path) -> None:
    plan = make(output_dir=tmp_path, max_lora_rank=8, lora_target_modules=("attn_q", "attn_v"))
    loaded = plan_mod.load(plan_mod.save(plan))
    assert loaded == plan
    assert json.loads(plan.plan_file.read_text())["lora_target_modules"] == ["attn_q", "attn_v"]


def test_cli_plan_takes_the_lora_flags(tmp_path: Path) -> None:
    argv = [
        "plan", "--model-dir", str(tmp_path / "m"), "--sku", "h100-sxm", "--precision", "fp16",
        "--output-dir", str(tmp_path / "out"),
        "--max-lora-rank", "8", "--lora-target-modules", "attn_q", "attn_v",
    ]  # fmt: skip
    assert main(argv, Console(width=300)) == 0
    plan = plan_mod.load(tmp_path / "out" / plan_mod.PLAN_FILE)
    assert (plan.max_lora_rank, plan.lora_target_modules) == (8, ("attn_q", "attn_v"))
