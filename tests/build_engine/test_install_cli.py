"""install (CPU reference for real, GPU with stand-in engine files) and the CLI around it."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.cli import _lora_column, main
from autoglm.build_engine.install import InstallError, install
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.quality import QualityResult
from autoglm.triton_models.render import parse_model_config


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = main(list(argv), Console(file=out, width=400))
    return rc, out.getvalue()


def test_cpu_install_via_cli_twice(model_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    rc, text = run(
        "plan",
        "--model-dir",
        str(model_dir),
        "--sku",
        "cpu",
        "--precision",
        "fp32",
        "--output-dir",
        str(tmp_path / "out"),
        "--model-repo",
        str(repo),
        "--model-name",
        "smollm2",
    )
    assert rc == 0, text
    assert "install --plan" in text and "trtllm-build" not in text
    for version in (1, 2):
        rc, text = run("install", "--plan", str(tmp_path / "out" / "plan.json"))
        assert rc == 0, text
        vdir = repo / "smollm2" / str(version)
        assert (vdir / "model.py").is_file() and (vdir / "tokenizer.json").is_file()
        assert (vdir / "hf").resolve() == model_dir.resolve()
        m = mf.verify(vdir)
        assert m.profile.sku == "cpu" and m.tensorrt_version == "n/a"
        assert "hf/model.safetensors" in m.files
    config = (repo / "smollm2" / "config.pbtxt").read_text()
    assert 'name: "smollm2"' in config and str(model_dir.resolve()) in config
    # The CPU engine enforces the prompt limit the manifest records, as a TensorRT-LLM build.
    limit = parse_model_config(config).parameters["max_input_len"].string_value
    assert limit == str(m.profile.max_input_len) == "1024"
    assert not [p for p in (repo / "smollm2").iterdir() if p.name.startswith(".staging")]
    rc, text = run("list-profiles", str(repo))
    assert rc == 0 and "selected" in text and "cpu" in text


def fake_engine(tmp_path: Path, plan: BuildPlan) -> None:
    plan.engine_dir.mkdir(parents=True)
    (plan.engine_dir / "config.json").write_text(json.dumps({"version": "1.2.1"}))
    (plan.engine_dir / "rank0.engine").write_bytes(b"stand-in, not a TensorRT plan")
    m = mf.Manifest(mf.Profile.from_plan(plan), mf.hash_tree(plan.engine_dir), "10.14.1", "1.2.1")
    mf.write(plan.engine_dir, m)


def gpu_plan(tmp_path: Path) -> BuildPlan:
    return BuildPlan(
        model_dir=tmp_path / "SmolLM2",
        sku="h100-sxm",
        precision="fp8",
        kv_cache_dtype="fp8",
        output_dir=tmp_path / "out",
        model_repo=tmp_path / "repo",
    )


def passed(ok: bool) -> QualityResult:
    return QualityResult(
        "fp8",
        10.0,
        10.5,
        1.05,
        0.95,
        200,
        1.15,
        0.85,
        ok,
        () if ok else ("perplexity ratio 2.0 > 1.15",),
    )


def test_gpu_install_renders_tensorrt_llm(tmp_path: Path) -> None:
    plan = gpu_plan(tmp_path)
    fake_engine(tmp_path, plan)
    done = install(plan, quality=passed(True))
    assert done.version == 1
    assert (done.version_dir / "rank0.engine").read_bytes().startswith(b"stand-in")
    config = (tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert f'string_value: "{done.version_dir}"' in config
    assert mf.verify(done.version_dir).tensorrt_llm_version == "1.2.1"


def test_install_refuses_failed_gate_and_tampered_engine(tmp_path: Path) -> None:
    plan = gpu_plan(tmp_path)
    fake_engine(tmp_path, plan)
    with pytest.raises(InstallError, match=r"quality gate did not pass"):
        install(plan, quality=passed(False))
    (plan.engine_dir / "rank0.engine").write_bytes(b"swapped")
    with pytest.raises(mf.ManifestError, match=r"checksum mismatch rank0.engine"):
        install(plan, quality=passed(True))
    assert not (tmp_path / "repo" / "tensorrt_llm" / "1").exists()


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    rc, text = run(
        "plan",
        "--model-dir",
        str(tmp_path),
        "--sku",
        "a100-80gb",
        "--precision",
        "fp8",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert rc == 2 and "'fp8' is not supported on SKU 'a100-80gb'" in text
    rc, text = run("skus")
    assert rc == 0 and "h100-sxm" in text and "nvfp4" in text
    rc, text = run(
        "plan",
        "--model-dir",
        str(tmp_path),
        "--sku",
        "h100-sxm",
        "--precision",
        "fp8",
        "--kv-cache-dtype",
        "fp8",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert rc == 0 and "--use_fp8_context_fmha enable" in text
    rc, text = run("compile", "--plan", str(tmp_path / "o" / "plan.json"))
    assert rc == 1 and "no quality report" in text
    rc, text = run("quality", "--plan", str(tmp_path / "o" / "plan.json"))
    assert rc == 1 and "no quality report" in text


def test_activate_pins_checks_and_unpins(model_dir: Path, tmp_path: Path) -> None:
    """`activate` writes the pin the server reads on reload, only for a version it could serve."""
    repo = tmp_path / "repo"
    rc, text = run(
        "plan",
        "--model-dir",
        str(model_dir),
        "--sku",
        "cpu",
        "--precision",
        "fp32",
        "--output-dir",
        str(tmp_path / "out"),
        "--model-repo",
        str(repo),
        "--model-name",
        "smollm2",
    )
    assert rc == 0, text
    for _ in (1, 2):
        assert run("install", "--plan", str(tmp_path / "out" / "plan.json"))[0] == 0
    pin = repo / "smollm2" / "pin.json"

    rc, text = run("activate", "smollm2", "--repository", str(repo), "--version", "1")
    assert rc == 0, text
    assert json.loads(pin.read_text()) == {"version": 1}
    assert "pinned to smollm2 version 1" in text and "kill -HUP" in text
    rc, text = run("list-profiles", str(repo))  # list-profiles shows what serve would load
    assert rc == 0

    # Refusals: nothing written, the field named.
    rc, text = run("activate", "smollm2", "--repository", str(repo), "--version", "7")
    assert rc == 2 and "version 7" in text
    rc, text = run("activate", "nope", "--repository", str(repo), "--version", "1")
    assert rc == 2 and "model: no model 'nope'" in text
    rc, text = run("activate", "smollm2", "--repository", str(repo), "--version", "0")
    assert rc == 2 and "--version: must be >= 1" in text
    rc, text = run("activate", "smollm2", "--repository", str(repo), "--profile", "f00")
    assert rc == 2 and "profile f00" in text
    rc, text = run(
        "activate", "smollm2", "--repository", str(repo), "--version", "2", "--signal", "999999"
    )
    assert rc == 2 and "--signal: no process 999999" in text
    assert json.loads(pin.read_text()) == {"version": 2}  # the pin stands; only the signal failed

    rc, text = run("activate", "smollm2", "--repository", str(repo), "--best")
    assert rc == 0 and "pin removed" in text and not pin.exists()


def test_list_profiles_says_what_adapters_each_engine_takes(tmp_path: Path) -> None:
    plan = gpu_plan(tmp_path)
    assert _lora_column(mf.Profile.from_plan(plan)) == "none"  # built without LoRA
    lora = dataclasses.replace(plan, max_lora_rank=16, lora_target_modules=("attn_v", "attn_q"))
    assert _lora_column(mf.Profile.from_plan(lora)) == "r16 attn_q,attn_v"  # module-id order
    cpu = dataclasses.replace(plan, sku="cpu", precision="fp32", kv_cache_dtype="auto")
    assert _lora_column(mf.Profile.from_plan(cpu)) == "any"
