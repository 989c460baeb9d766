"""`adapter add` against a base served by TensorRT-LLM engines: the manifests' LoRA build fields.

The base's versions are stand-ins: a version folder holding config.json, a rank0.engine of a few
bytes (not a TensorRT plan) and the manifest.json install writes, whose profile says what the
engine was built for. The adapter is a real PEFT adapter of SmolLM2 (tiny_lora.py: rank 8 on
q_proj and v_proj).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from autoglm.build_engine import adapters as ad
from autoglm.build_engine import manifest as mf
from autoglm.build_engine.cli import main
from autoglm.build_engine.tiny_lora import make_adapter

BASE = "smollm2"


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(model_dir, tmp_path_factory.mktemp("lora") / "a", seed=3)


@pytest.fixture(scope="module")
def wide_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rank 96: above DEFAULT_MAX_RANK (64), which only an engine's recorded rank may allow."""
    return make_adapter(
        model_dir, tmp_path_factory.mktemp("lora") / "w", seed=4, rank=96, targets=("q_proj",)
    )


def profile(**kw: object) -> mf.Profile:
    base: dict[str, object] = {
        "model": "SmolLM2-135M-Instruct", "sku": "h100-sxm", "compute_capability": "9.0",
        "precision": "fp16", "kv_cache_dtype": "auto", "tp": 1, "pp": 1, "max_batch": 8,
        "max_input_len": 1024, "max_seq_len": 2048, "max_num_tokens": 4096, "profile": "latency",
    }  # fmt: skip
    base.update(kw)
    return mf.Profile(**base)  # type: ignore[arg-type]


def install_stand_in(repo: Path, version: int, prof: mf.Profile) -> None:
    vdir = repo / BASE / str(version)
    vdir.mkdir(parents=True)
    (vdir / "config.json").write_text(json.dumps({"version": "1.2.1"}))
    (vdir / "rank0.engine").write_bytes(b"stand-in, not a TensorRT plan")
    mf.write(vdir, mf.Manifest(prof, mf.hash_tree(vdir)))


LORA_QV = profile(max_lora_rank=16, lora_target_modules=("attn_q", "attn_v"))


# ---- pure ------------------------------------------------------------------------------------


def test_check_engines_accepts_what_every_engine_covers() -> None:
    engines = (
        ad.EngineLora(1, 8, ("attn_q", "attn_v")),
        ad.EngineLora(2, 64, ("attn_q", "attn_v", "attn_k")),
    )
    ad.check_engines(8, ("q_proj", "v_proj"), engines)
    ad.check_engines(8, ("q_proj",), engines)
    ad.check_engines(99, ("q_proj",), ())  # no TensorRT-LLM version: nothing to hold it to


NO_LORA_MSG = r"max_lora_rank: m version 3 \(a TensorRT-LLM engine\) was built without LoRA"
RANK_MSG = r"r: the adapter's rank 32 exceeds max_lora_rank 16 of m version 2"
MODULE_MSG = (
    r"target_modules: the adapter's down_proj \(mlp_4h_to_h\) is not among lora_target_modules "
    r"\['attn_q', 'attn_v'\] of m version 2"
)


@pytest.mark.parametrize(
    ("rank", "modules", "engine", "message"),
    [
        (8, ("q_proj",), ad.EngineLora(3, 0, ()), NO_LORA_MSG),
        (32, ("q_proj",), ad.EngineLora(2, 16, ("attn_q",)), RANK_MSG),
        (
            8,
            ("q_proj", "v_proj", "down_proj"),
            ad.EngineLora(2, 16, ("attn_q", "attn_v")),
            MODULE_MSG,
        ),
    ],
)
def test_check_engines_names_field_adapter_value_and_engine_value(
    rank: int, modules: tuple[str, ...], engine: ad.EngineLora, message: str
) -> None:
    with pytest.raises(ad.AdapterError, match=message):
        ad.check_engines(rank, modules, (engine,), base="m")


# ---- add against an installed repository -----------------------------------------------------


def test_add_accepts_an_adapter_the_engine_covers(
    tmp_path: Path, model_dir: Path, adapter_dir: Path
) -> None:
    repo = tmp_path / "repo"
    install_stand_in(repo, 1, LORA_QV)
    one = ad.add(repo / "adapters", "one", base=BASE, base_dir=model_dir, source=adapter_dir)
    assert (one.rank, one.target_modules) == (8, ("q_proj", "v_proj"))
    assert ad.installed_profiles(repo, BASE) == [(1, LORA_QV)]


RANK4_QV = profile(max_lora_rank=4, lora_target_modules=("attn_q", "attn_v"))
LORA_QK = profile(max_lora_rank=16, lora_target_modules=("attn_q", "attn_k"))
BUILT_WITHOUT = r"smollm2 version 1 \(a TensorRT-LLM engine\) was built without LoRA"


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        ([profile()], f"max_lora_rank: {BUILT_WITHOUT}"),
        ([RANK4_QV], r"r: the adapter's rank 8 exceeds max_lora_rank 4 of smollm2 version 1"),
        (
            [LORA_QK],
            r"target_modules: the adapter's v_proj \(attn_v\) is not among lora_target_modules "
            r"\['attn_q', 'attn_k'\] of smollm2 version 1",
        ),
        # An older version built without LoRA can be activated again: it must serve it too.
        ([profile(), LORA_QV], BUILT_WITHOUT),
        ([LORA_QV, RANK4_QV], r"rank 8 exceeds max_lora_rank 4 of smollm2 version 2"),
    ],
)
def test_add_refuses_what_an_installed_engine_cannot_serve(
    tmp_path: Path, model_dir: Path, adapter_dir: Path, versions: list[mf.Profile], message: str
) -> None:
    repo = tmp_path / "repo"
    for number, prof in enumerate(versions, start=1):
        install_stand_in(repo, number, prof)
    with pytest.raises(ad.AdapterError, match=message):
        ad.add(repo / "adapters", "one", base=BASE, base_dir=model_dir, source=adapter_dir)
    assert ad.load_registry(repo / "adapters") == {}


def test_the_engines_rank_bounds_instead_of_the_default(
    tmp_path: Path, model_dir: Path, wide_dir: Path
) -> None:
    repo = tmp_path / "repo"
    install_stand_in(repo, 1, profile(max_lora_rank=128, lora_target_modules=("attn_q",)))
    wide = ad.add(repo / "adapters", "wide", base=BASE, base_dir=model_dir, source=wide_dir)
    assert wide.rank == 96 > ad.DEFAULT_MAX_RANK
    # An explicit --max-rank still bounds it.
    with pytest.raises(ad.AdapterError, match=r"r: 96 must be an integer in \[1, 64\]"):
        ad.add(
            tmp_path / "repo" / "adapters",
            "again",
            base=BASE,
            base_dir=model_dir,
            source=wide_dir,
            max_rank=64,
        )


def test_cpu_versions_keep_the_default_bound(
    tmp_path: Path, model_dir: Path, adapter_dir: Path, wide_dir: Path
) -> None:
    repo = tmp_path / "repo"
    cpu = profile(sku="cpu", compute_capability="n/a", precision="fp32")
    install_stand_in(repo, 1, cpu)
    with pytest.raises(ad.AdapterError, match=r"r: 96 must be an integer in \[1, 64\]"):
        ad.add(repo / "adapters", "wide", base=BASE, base_dir=model_dir, source=wide_dir)
    one = ad.add(repo / "adapters", "one", base=BASE, base_dir=model_dir, source=adapter_dir)
    assert one.rank == 8
    # Beside a LoRA engine of rank 128, the CPU version's bound still holds.
    install_stand_in(repo, 2, profile(max_lora_rank=128, lora_target_modules=("attn_q",)))
    with pytest.raises(ad.AdapterError, match=r"r: 96 must be an integer in \[1, 64\]"):
        ad.add(repo / "adapters", "wide", base=BASE, base_dir=model_dir, source=wide_dir)


def test_unreadable_version_is_skipped(tmp_path: Path, model_dir: Path, adapter_dir: Path) -> None:
    repo = tmp_path / "repo"
    install_stand_in(repo, 1, LORA_QV)
    (repo / BASE / "2").mkdir()  # a version without manifest.json: never loaded
    (repo / BASE / ".staging-3-x").mkdir()
    assert [v for v, _ in ad.installed_profiles(repo, BASE)] == [1]
    ad.add(repo / "adapters", "one", base=BASE, base_dir=model_dir, source=adapter_dir)


def test_cli_names_the_engine_value(tmp_path: Path, model_dir: Path, adapter_dir: Path) -> None:
    repo = tmp_path / "repo"
    install_stand_in(repo, 1, RANK4_QV)
    out = io.StringIO()
    argv = [
        "adapter", "add", "tenant-a", "--base", BASE, "--path", str(adapter_dir),
        "--repository", str(repo), "--base-dir", str(model_dir),
    ]  # fmt: skip
    assert main(argv, Console(file=out, width=400)) == 2
    assert "r: the adapter's rank 8 exceeds max_lora_rank 4 of smollm2 version 1" in out.getvalue()
    assert not (repo / "adapters" / "tenant-a").exists()
