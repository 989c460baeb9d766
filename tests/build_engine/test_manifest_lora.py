"""A LoRA build in the profile and the install: the id, the manifest JSON and the LoRA cache.

GPU installs run on stand-in engine files (config.json + a rank0.engine holding a few bytes, not
a TensorRT plan), as in test_install_cli.py: install copies and checksums them, never loads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.install import InstallError, install, lora_cache_sizes
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.quality import QualityResult
from autoglm.triton_models.render import parse_model_config

# Profile ids and manifest fields of builds without LoRA, as computed before the profile had
# LoRA fields: existing installs must keep verifying and being selected unchanged.
NO_LORA_ID = "e88d806440382a8d"
NO_LORA_PROFILE_KEYS = {
    "model", "sku", "compute_capability", "precision", "kv_cache_dtype", "tp", "pp",
    "max_batch", "max_input_len", "max_seq_len", "max_num_tokens", "profile",
}  # fmt: skip
CPU_ID = "40c6751f6d367070"
VLLM_ID = "f1535b5471190424"
# The stand-in GPU install below (model folder "SmolLM2", h100-sxm fp8) without LoRA.
GPU_INSTALL_ID = "804bb3424585ecdc"


def profile(**kw: object) -> mf.Profile:
    base: dict[str, object] = {
        "model": "SmolLM2-135M-Instruct", "sku": "h100-sxm", "compute_capability": "9.0",
        "precision": "fp8", "kv_cache_dtype": "fp8", "tp": 1, "pp": 1, "max_batch": 8,
        "max_input_len": 1024, "max_seq_len": 2048, "max_num_tokens": 4096, "profile": "latency",
    }  # fmt: skip
    base.update(kw)
    return mf.Profile(**base)  # type: ignore[arg-type]


def test_profiles_without_lora_keep_their_ids_and_json() -> None:
    assert profile().id == NO_LORA_ID
    assert set(profile().to_dict()) == NO_LORA_PROFILE_KEYS
    cpu = profile(
        model="m", sku="cpu", compute_capability="n/a", precision="fp32", kv_cache_dtype="auto"
    )
    assert cpu.id == CPU_ID
    vllm = profile(model="m", precision="bf16", kv_cache_dtype="auto", engine="vllm")
    assert vllm.id == VLLM_ID
    assert not profile().has_lora


def test_lora_changes_the_id_and_round_trips(tmp_path: Path) -> None:
    lora = profile(max_lora_rank=16, lora_target_modules=("attn_q", "attn_v"))
    assert lora.has_lora
    assert lora.id != NO_LORA_ID
    assert lora.id != profile(max_lora_rank=32, lora_target_modules=("attn_q", "attn_v")).id
    assert lora.id != profile(max_lora_rank=16, lora_target_modules=("attn_q",)).id
    (tmp_path / "rank0.engine").write_bytes(b"stand-in, not a TensorRT plan")
    mf.write(tmp_path, mf.Manifest(lora, mf.hash_tree(tmp_path)))
    data = json.loads((tmp_path / mf.MANIFEST).read_text())
    assert data["profile"]["max_lora_rank"] == 16
    assert data["profile"]["lora_target_modules"] == ["attn_q", "attn_v"]
    back = mf.verify(tmp_path)
    assert back.profile == lora and back.profile_id == lora.id
    assert back.profile.lora_target_modules == ("attn_q", "attn_v")  # a tuple again


def test_malformed_lora_fields_are_a_manifest_error(tmp_path: Path) -> None:
    good = mf.Manifest(profile(max_lora_rank=8, lora_target_modules=("attn_q",)), {})
    data = good.to_dict()
    data["profile"]["lora_target_modules"] = "attn_q"  # type: ignore[index]
    with pytest.raises(mf.ManifestError, match="malformed manifest"):
        mf.Manifest.from_dict(data)
    data = good.to_dict()
    data["profile"]["max_lora_rank"] = "8"  # type: ignore[index]
    with pytest.raises(mf.ManifestError, match="max_lora_rank"):
        mf.Manifest.from_dict(data)
    data = good.to_dict()
    data["profile"]["max_lora_rank"] = 64  # type: ignore[index]
    with pytest.raises(mf.ManifestError, match="does not match the hash"):
        mf.Manifest.from_dict(data)


def plan_of(tmp_path: Path, **kw: object) -> BuildPlan:
    base: dict[str, object] = {
        "model_dir": tmp_path / "SmolLM2",
        "sku": "h100-sxm",
        "precision": "fp8",
        "kv_cache_dtype": "fp8",
        "output_dir": tmp_path / "out",
        "model_repo": tmp_path / "repo",
    }
    base.update(kw)
    return BuildPlan(**base)  # type: ignore[arg-type]


def test_from_plan_records_lora_in_one_order(tmp_path: Path) -> None:
    assert mf.Profile.from_plan(plan_of(tmp_path)).id == GPU_INSTALL_ID
    a = mf.Profile.from_plan(
        plan_of(tmp_path, max_lora_rank=16, lora_target_modules=("attn_v", "attn_q"))
    )
    b = mf.Profile.from_plan(
        plan_of(tmp_path, max_lora_rank=16, lora_target_modules=("attn_q", "attn_v"))
    )
    assert a == b and a.lora_target_modules == ("attn_q", "attn_v")  # module id order


def stand_in_engine(plan: BuildPlan, profile: mf.Profile | None = None) -> None:
    """config.json + a rank0.engine that is a stand-in (a few bytes, not a TensorRT plan), and
    the manifest the compile step would write."""
    plan.engine_dir.mkdir(parents=True)
    (plan.engine_dir / "config.json").write_text(json.dumps({"version": "1.2.1"}))
    (plan.engine_dir / "rank0.engine").write_bytes(b"stand-in, not a TensorRT plan")
    prof = profile or mf.Profile.from_plan(plan)
    mf.write(plan.engine_dir, mf.Manifest(prof, mf.hash_tree(plan.engine_dir), "10.14", "1.2.1"))


PASSED = QualityResult("fp8", 10.0, 10.5, 1.05, 0.95, 200, 1.15, 0.85, True, ())


def lora_params(config_text: str) -> tuple[str, str]:
    params = parse_model_config(config_text).parameters
    return (
        params["lora_cache_optimal_adapter_size"].string_value,
        params["lora_cache_max_adapter_size"].string_value,
    )


def test_install_without_lora_is_unchanged(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    stand_in_engine(plan)
    done = install(plan, quality=PASSED)
    assert done.manifest.profile_id == GPU_INSTALL_ID
    data = json.loads((done.version_dir / mf.MANIFEST).read_text())
    assert set(data["profile"]) == NO_LORA_PROFILE_KEYS
    # The backend's defaults, as before the LoRA cache was sized from the plan.
    assert lora_params((done.model_dir / "config.pbtxt").read_text()) == ("8", "64")
    assert lora_cache_sizes(plan) == {}


@pytest.mark.parametrize(("rank", "optimal"), [(128, "8"), (4, "4")])
def test_install_sizes_the_lora_cache_for_the_engine_rank(
    tmp_path: Path, rank: int, optimal: str
) -> None:
    plan = plan_of(tmp_path, max_lora_rank=rank, lora_target_modules=("attn_q", "attn_v"))
    stand_in_engine(plan)
    done = install(plan, quality=PASSED)
    for config in (done.model_dir / "config.pbtxt", done.version_dir / mf.VERSION_CONFIG):
        assert lora_params(config.read_text()) == (optimal, str(rank))
    m = mf.verify(done.version_dir)
    assert (m.profile.max_lora_rank, m.profile.lora_target_modules) == (
        rank,
        ("attn_q", "attn_v"),
    )
    assert m.profile_id != GPU_INSTALL_ID


def test_install_refuses_an_engine_whose_manifest_lacks_the_plans_lora(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, max_lora_rank=16, lora_target_modules=("attn_q",))
    # Compiled from the same plan without LoRA (or recorded before the profile had LoRA).
    stand_in_engine(plan, mf.Profile.from_plan(plan_of(tmp_path)))
    with pytest.raises(InstallError, match=f"is profile {GPU_INSTALL_ID}, the plan is"):
        install(plan, quality=PASSED)
    assert not (tmp_path / "repo" / "tensorrt_llm" / "1").exists()
