"""manifest.json write/read/verify and NIM-order profile selection."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.gpus import GpuInfo
from autoglm.build_engine.manifest import Hardware, Manifest, ManifestError, Profile, select_profile

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 81559)
A100_40 = GpuInfo("NVIDIA A100-SXM4-40GB", (8, 0), 40960)


def profile(**kw: object) -> Profile:
    base: dict[str, object] = {
        "model": "SmolLM2-135M-Instruct", "sku": "h100-sxm", "compute_capability": "9.0",
        "precision": "fp8", "kv_cache_dtype": "fp8", "tp": 1, "pp": 1, "max_batch": 8,
        "max_input_len": 1024, "max_seq_len": 2048, "max_num_tokens": 4096, "profile": "latency",
    }  # fmt: skip
    base.update(kw)
    return Profile(**base)  # type: ignore[arg-type]


def manifest(**kw: object) -> Manifest:
    return Manifest(profile=profile(**kw), files={})


def test_profile_id_is_content_hash() -> None:
    assert profile().id == profile().id
    assert profile().id != profile(max_batch=16).id
    assert len(profile().id) == 16


def test_write_read_verify(tmp_path: Path) -> None:
    (tmp_path / "rank0.engine").write_bytes(b"engine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text("{}")
    m = Manifest(profile(), mf.hash_tree(tmp_path), "10.14.1", "1.2.1", {"passed": True}, 12.5)
    mf.write(tmp_path, m)
    assert mf.verify(tmp_path) == m
    assert set(m.files) == {"rank0.engine", "sub/config.json"}


def test_verify_names_each_mismatch(tmp_path: Path) -> None:
    (tmp_path / "rank0.engine").write_bytes(b"engine")
    (tmp_path / "config.json").write_text("{}")
    mf.write(tmp_path, Manifest(profile(), mf.hash_tree(tmp_path)))
    (tmp_path / "rank0.engine").write_bytes(b"other engine")
    (tmp_path / "config.json").unlink()
    (tmp_path / "stray.bin").write_bytes(b"x")
    with pytest.raises(ManifestError) as err:
        mf.verify(tmp_path)
    text = str(err.value)
    assert "checksum mismatch rank0.engine" in text
    assert "missing config.json" in text
    assert "unexpected file stray.bin" in text


def test_tampered_profile_id(tmp_path: Path) -> None:
    mf.write(tmp_path, Manifest(profile(), {}))
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["profile"]["precision"] = "bf16"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"profile_id .* does not match"):
        mf.read(tmp_path)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no manifest"):
        mf.read(tmp_path)


def test_selection_prefers_lower_precision_then_fewer_gpus() -> None:
    fp8_tp2 = manifest(tp=2)
    fp8 = manifest()
    bf16 = manifest(precision="bf16", kv_cache_dtype="auto")
    ampere = manifest(
        sku="a100-80gb", compute_capability="8.0", precision="int8_sq", kv_cache_dtype="int8"
    )
    cpu = manifest(sku="cpu", compute_capability="n/a", precision="fp32", kv_cache_dtype="auto")
    sel = select_profile([bf16, cpu, fp8_tp2, ampere, fp8], Hardware((H100, H100)))
    assert sel.chosen == fp8
    reasons = {m.profile_id: r for m, r in sel.rejected}
    assert "fewer GPUs (1 < 2)" in reasons[fp8_tp2.profile_id]
    assert "fp8" in reasons[bf16.profile_id] and "lower precision" in reasons[bf16.profile_id]
    assert "incompatible: built for compute 8.0" in reasons[ampere.profile_id]
    assert "lower precision" in reasons[cpu.profile_id]


def test_selection_without_gpu_falls_back_to_cpu() -> None:
    cpu = manifest(sku="cpu", compute_capability="n/a", precision="fp32", kv_cache_dtype="auto")
    fp8 = manifest()
    sel = select_profile([fp8, cpu], Hardware())
    assert sel.chosen == cpu
    assert "no GPU here" in sel.rejected[0][1]


def test_selection_rejects_too_few_gpus_and_small_memory() -> None:
    tp2 = manifest(tp=2)
    big = manifest(
        sku="a100-80gb", compute_capability="8.0", precision="bf16", kv_cache_dtype="auto"
    )
    sel = select_profile([tp2, big], Hardware((H100,)))
    assert sel.chosen is None
    assert "needs 2 GPUs" in sel.rejected[0][1]
    sel = select_profile([big], Hardware((A100_40,)))
    assert sel.chosen is None and "sized for 80 GB" in sel.rejected[0][1]
    assert select_profile([replace(big)], Hardware((A100_40,))).chosen is None
