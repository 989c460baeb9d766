"""TP/PP: the shape rules (pure), the CLI refusals, and a real tp=3 x pp=2 export on CPU."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from autoglm.build_engine.cli import main
from autoglm.build_engine.parallel import (
    ModelShape,
    ParallelismError,
    allowed_pp,
    allowed_tp,
    check_parallelism,
)
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.quantize import QuantizeSettings, quantize

# SmolLM2-135M: 9 heads, 3 KV heads, 30 layers, MLP 1536 (its config.json).
SMOL = ModelShape("SmolLM2-135M-Instruct", 9, 3, 30, 1536)
SETTINGS = QuantizeSettings(calib_chunks=1, calib_len=16, eval_chunks=1, eval_len=32)


def test_smollm2_shape_from_its_config(model_dir: Path) -> None:
    assert ModelShape.from_model_dir(model_dir) == SMOL


def test_allowed_values() -> None:
    # tp=9 divides the heads (KV heads replicated) but not the MLP: 1536 % 9 = 6.
    assert allowed_tp(SMOL) == [1, 3]
    assert allowed_pp(SMOL) == [1, 2, 3, 5, 6, 10, 15, 30]
    # Grouped-query attention with 8 KV heads: tp 16 replicates them, tp 12 cannot.
    llama8b = ModelShape("Llama-3.1-8B", 32, 8, 32, 14336)
    assert allowed_tp(llama8b) == [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize(
    ("tp", "pp", "message"),
    [
        (2, 1, r"^--tp 2 cannot split SmolLM2-135M-Instruct: its 9 attention heads are not "
               r"divisible by 2; --tp can be 1, 3$"),
        (9, 1, r"^--tp 9 .*MLP intermediate size 1536 is not divisible by 9"),
        (1, 4, r"^--pp 4 .*30 layers cannot be split evenly into 4 pipeline stages; "
               r"--pp can be 1, 2, 3, 5, 6, 10, 15, 30$"),
        (3, 31, r"^--pp 31 "),
    ],
)  # fmt: skip
def test_impossible_values_name_the_flag(tp: int, pp: int, message: str) -> None:
    with pytest.raises(ParallelismError, match=message):
        check_parallelism(tp, pp, SMOL)


def test_kv_heads_that_cannot_be_split_or_replicated() -> None:
    shape = ModelShape("odd", 12, 4, 2, 1200)
    with pytest.raises(ParallelismError, match=r"4 KV heads can neither be split over 6 ranks"):
        check_parallelism(6, 1, shape)
    check_parallelism(12, 2, shape)  # 4 KV heads, each replicated on 3 ranks


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = main(list(argv), Console(file=out, width=400))
    return rc, out.getvalue()


def test_plan_refuses_impossible_tp(model_dir: Path, tmp_path: Path) -> None:
    common = ["plan", "--model-dir", str(model_dir), "--sku", "h100-sxm", "--precision", "fp8"]
    rc, text = run(*common, "--tp", "2", "--output-dir", str(tmp_path / "a"))
    assert rc == 2 and "--tp 2 cannot split SmolLM2-135M-Instruct" in text
    assert not (tmp_path / "a" / "plan.json").exists()
    rc, text = run(*common, "--tp", "3", "--pp", "2", "--output-dir", str(tmp_path / "b"))
    assert rc == 0, text
    assert "--workers 6" in text and "6 rank(s): tp=3 x pp=2" in text
    plan = json.loads((tmp_path / "b" / "plan.json").read_text())
    assert (plan["tp"], plan["pp"]) == (3, 2)


def test_quantize_refuses_before_loading(tmp_path: Path, model_dir: Path) -> None:
    plan = BuildPlan(model_dir=model_dir, sku="h100-sxm", precision="fp16", tp=9,
                     output_dir=tmp_path)  # fmt: skip
    with pytest.raises(ParallelismError, match=r"^--tp 9 "):
        quantize(plan, SETTINGS)
    assert not plan.checkpoint_dir.exists()


@pytest.mark.slow
def test_tp3_pp2_export(model_dir: Path, tmp_path: Path) -> None:
    plan = BuildPlan(model_dir=model_dir, sku="h100-sxm", precision="fp16", tp=3, pp=2,
                     output_dir=tmp_path)  # fmt: skip
    # A stale rank from an earlier, larger export must not survive.
    plan.checkpoint_dir.mkdir(parents=True)
    (plan.checkpoint_dir / "rank7.safetensors").write_bytes(b"stale")
    result = quantize(plan, SETTINGS)
    ranks = sorted(p.name for p in plan.checkpoint_dir.glob("rank*.safetensors"))
    assert ranks == [f"rank{n}.safetensors" for n in range(6)]
    config = json.loads((plan.checkpoint_dir / "config.json").read_text())
    assert config["mapping"] == {"world_size": 6, "tp_size": 3, "pp_size": 2}
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    from safetensors import safe_open

    with safe_open(str(plan.checkpoint_dir / "rank0.safetensors"), "pt") as f:
        names = list(f.keys())  # safe_open handle: not iterable like a dict
        layers = {k.split(".")[2] for k in names if k.startswith("transformer.layers.")}
        qkv = f.get_slice("transformer.layers.0.attention.qkv.weight").get_shape()
        fc = f.get_slice("transformer.layers.0.mlp.fc.weight").get_shape()
    assert len(layers) == 15  # pp=2: half of the 30 layers per stage
    assert qkv == [(9 + 3 + 3) * 64 // 3, 576]  # 3 query + 1 K + 1 V heads of 64 per rank
    assert fc == [1536 // 3, 576]
    print(f"tp=3 pp=2 export: {result.export_seconds:.1f} s")
