"""Version selection (pure) and the load/switch bookkeeping against a stand-in engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.gpus import GpuInfo
from autoglm.build_engine.manifest import Hardware, Manifest, Profile
from autoglm.build_engine.version_plan import (
    Candidate,
    Override,
    OverrideError,
    parse_override,
    plan_loads,
    scan_repository,
    scan_roots,
)
from autoglm.server.engine.client import ModelControlError
from autoglm.server.engine.model_versions import ModelVersions, VersionRefused
from autoglm.server.engine.version_config import triton_config_json

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 81559)
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", (8, 0), 81920)
CPU_FIELDS = {
    "sku": "cpu",
    "compute_capability": "n/a",
    "precision": "fp32",
    "kv_cache_dtype": "auto",
}
A100_FIELDS = {"sku": "a100-80gb", "compute_capability": "8.0"}


def profile(**kw: object) -> Profile:
    base: dict[str, object] = {
        "model": "SmolLM2-135M-Instruct", "sku": "h100-sxm", "compute_capability": "9.0",
        "precision": "fp8", "kv_cache_dtype": "fp8", "tp": 1, "pp": 1, "max_batch": 8,
        "max_input_len": 1024, "max_seq_len": 2048, "max_num_tokens": 4096, "profile": "latency",
    }  # fmt: skip
    base.update(kw)
    return Profile(**base)  # type: ignore[arg-type]


def cand(version: int, model: str = "llm", **kw: object) -> Candidate:
    return Candidate(model, version, Path(f"/repo/{model}/{version}"), Manifest(profile(**kw), {}))


def versions(decision_ranked: tuple[Candidate, ...]) -> list[int | None]:
    return [c.version for c in decision_ranked]


# ---- plan_loads ----------------------------------------------------------------------------


def test_best_compatible_then_lower_precision_then_fewer_gpus() -> None:
    cands = [
        cand(1, precision="bf16", kv_cache_dtype="auto"),
        cand(2),  # fp8, 1 GPU
        cand(3, tp=2),  # fp8, 2 GPUs
        cand(4, precision="int8_sq", kv_cache_dtype="int8", **A100_FIELDS),  # wrong CC
        cand(5, **CPU_FIELDS),
    ]
    [d] = plan_loads(cands, Hardware((H100, H100)))
    assert d.model == "llm" and d.error is None
    assert d.chosen is not None and d.chosen.version == 2
    assert versions(d.ranked) == [2, 3, 1, 5]  # compatible fallbacks, best first
    reasons = {c.version: r for c, r in d.rejected}
    assert "fewer GPUs (1 < 2)" in reasons[3]
    assert "lower precision" in reasons[1]
    assert "incompatible: built for compute 8.0" in reasons[4]


def test_same_profile_installed_twice_newest_version_wins() -> None:
    [d] = plan_loads(
        [cand(1, **CPU_FIELDS), cand(3, **CPU_FIELDS), cand(2, **CPU_FIELDS)], Hardware()
    )
    assert versions(d.ranked) == [3, 2, 1]
    assert all("same profile as the newer version 3" in r for _, r in d.rejected)


def test_no_gpu_here_selects_cpu_and_each_model_is_planned_alone() -> None:
    cands = [cand(1, model="a"), cand(2, model="a", **CPU_FIELDS), cand(1, model="b")]
    a, b = plan_loads(cands, Hardware())
    assert a.chosen is not None and a.chosen.version == 2
    assert b.chosen is None and b.ranked == ()
    assert b.error is not None
    assert b.error.startswith("b: no installed version can run on this host (cpu (no GPU))")
    assert "b version 1: incompatible: needs 1 x h100-sxm GPU" in b.error


def test_unreadable_manifest_is_rejected_with_its_error() -> None:
    bad = Candidate("llm", 2, Path("/repo/llm/2"), None, "/repo/llm/2/manifest.json: no manifest")
    [d] = plan_loads([cand(1, **CPU_FIELDS), bad], Hardware())
    assert versions(d.ranked) == [1]
    assert d.rejected == ((bad, "unreadable manifest: /repo/llm/2/manifest.json: no manifest"),)


def test_override_by_version_and_by_profile() -> None:
    cands = [cand(1, precision="bf16", kv_cache_dtype="auto"), cand(2), cand(3, tp=2)]
    hw = Hardware((H100, H100))
    [d] = plan_loads(cands, hw, [Override("llm", version=1)])
    assert versions(d.ranked) == [1]
    assert {c.version: r for c, r in d.rejected}[2] == "not the requested version 1"
    tp2 = cands[2].manifest
    assert tp2 is not None
    [d] = plan_loads(cands, hw, [Override(profile_id=tp2.profile_id)])  # no model named
    assert versions(d.ranked) == [3]


def test_override_never_falls_back_silently() -> None:
    cands = [cand(1, **CPU_FIELDS), cand(2)]
    [d] = plan_loads(cands, Hardware(), [Override("llm", version=2)])
    assert d.ranked == () and d.error is not None
    assert d.error.startswith("llm: the requested version 2 cannot run on this host")
    assert "needs 1 x h100-sxm GPU" in d.error and "version 1" not in d.error
    [d] = plan_loads(cands, Hardware(), [Override("llm", version=9)])
    assert d.error == "llm: the requested version 9 is not installed"


def test_bad_overrides_are_errors() -> None:
    with pytest.raises(OverrideError, match="no such model"):
        plan_loads([cand(1)], Hardware(), [Override("other", version=1)])
    with pytest.raises(OverrideError, match="no installed version has profile deadbeef"):
        plan_loads([cand(1)], Hardware(), [Override(profile_id="deadbeef")])
    pid = cand(1).manifest.profile_id  # type: ignore[union-attr]
    with pytest.raises(OverrideError, match="several overrides"):
        plan_loads([cand(1)], Hardware(), [Override("llm", version=1), Override(profile_id=pid)])


def test_parse_override() -> None:
    assert parse_override("0123abcd0123abcd") == Override(profile_id="0123abcd0123abcd")
    assert parse_override("smollm2=0123abcd") == Override("smollm2", profile_id="0123abcd")
    assert parse_override("smollm2@3") == Override("smollm2", version=3)
    for bad in ("smollm2@x", "a b", "", "m=v=1"):
        with pytest.raises(OverrideError):
            parse_override(bad)


# ---- the repository on disk ----------------------------------------------------------------

CONFIG = 'name: "llm"\nbackend: "python"\nmax_batch_size: 8\n'


def install_fake(repo: Path, model: str, version: int, **kw: object) -> Path:
    vdir = repo / model / str(version)
    vdir.mkdir(parents=True)
    (vdir / "model.py").write_text(f"# version {version}\n")
    (vdir / mf.VERSION_CONFIG).write_text(CONFIG.replace('"llm"', f'"{model}"'))
    mf.write(vdir, Manifest(profile(**{**CPU_FIELDS, **kw}), mf.hash_tree(vdir)))
    (repo / model / "config.pbtxt").write_text(CONFIG)
    return vdir


def test_scan_repository_and_roots(tmp_path: Path) -> None:
    install_fake(tmp_path, "llm", 1)
    install_fake(tmp_path, "llm", 10)
    (tmp_path / "llm" / ".staging-11-x").mkdir()
    (tmp_path / "llm" / "3").mkdir()  # no manifest
    found = scan_repository(tmp_path)
    assert [(c.model, c.version) for c in found] == [("llm", 1), ("llm", 3), ("llm", 10)]
    assert found[1].manifest is None and "no manifest" in (found[1].error or "")
    assert [c.version for c in scan_roots([tmp_path / "llm"])] == [1, 3, 10]
    assert [(c.model, c.version) for c in scan_roots([tmp_path / "llm" / "10"])] == [("llm", 10)]
    assert len(scan_roots([tmp_path])) == 3


def test_config_override_pins_exactly_this_version(tmp_path: Path) -> None:
    vdir = install_fake(tmp_path, "llm", 2)
    [c] = [c for c in scan_repository(tmp_path) if c.version == 2]
    config = json_format.Parse(
        triton_config_json(c, tmp_path / "llm"), model_config_pb2.ModelConfig()
    )
    assert list(config.version_policy.specific.versions) == [2]
    assert config.name == "llm" and config.max_batch_size == 8
    assert "version_policy" in json.loads(triton_config_json(c, tmp_path / "llm"))
    (vdir / mf.VERSION_CONFIG).unlink()  # an older install: the model root's config
    assert "max_batch_size" in triton_config_json(c, tmp_path / "llm")


# ---- ModelVersions with a stand-in engine --------------------------------------------------


class FakeEngine:
    """TEST STAND-IN for EngineClient's model-control calls (the real one: integration tests)."""

    def __init__(self) -> None:
        self.loads: list[list[int]] = []
        self.ready: set[int] = set()
        self.fail_versions: set[int] = set()

    async def load_model(self, name: str, *, config_json: str | None = None) -> None:
        assert config_json is not None
        wanted = json.loads(config_json)["version_policy"]["specific"]["versions"]
        self.loads.append([int(v) for v in wanted])
        if set(int(v) for v in wanted) & self.fail_versions:
            raise ModelControlError("RepositoryModelLoad llm: INTERNAL: failed to load", None)
        self.ready = {int(v) for v in wanted}

    async def model_ready(self, name: str, *, version: str = "", timeout: float = 2.0) -> bool:
        return int(version) in self.ready


async def test_select_verify_load_and_refuse_corrupted(tmp_path: Path) -> None:
    install_fake(tmp_path, "llm", 1)
    engine = FakeEngine()
    mv = ModelVersions(tmp_path, engine, hardware=Hardware())  # type: ignore[arg-type]
    loaded = await mv.select_and_load()
    assert loaded["llm"].version == 1 and engine.loads == [[1]]
    v2 = install_fake(tmp_path, "llm", 2)
    (v2 / "model.py").write_text("# tampered\n")
    with pytest.raises(
        VersionRefused, match=r"llm version 2 refused: .*checksum mismatch model.py"
    ):
        await mv.switch("llm", 2)
    # Reload: version 2 ranks first (newest), is refused, version 1 keeps serving, untouched.
    loaded = await mv.select_and_load()
    assert loaded["llm"].version == 1 and engine.loads == [[1]]
    assert engine.ready == {1}


async def test_switch_refusals_keep_the_loaded_version(tmp_path: Path) -> None:
    install_fake(tmp_path, "llm", 1)
    install_fake(tmp_path, "llm", 2, sku="h100-sxm", compute_capability="9.0", precision="fp8")
    install_fake(tmp_path, "llm", 3)
    engine = FakeEngine()
    mv = ModelVersions(tmp_path, engine, hardware=Hardware())  # type: ignore[arg-type]
    assert (await mv.select_and_load())["llm"].version == 3  # v2 incompatible, v3 newest cpu
    with pytest.raises(VersionRefused, match=r"requested version 2 cannot run .* no GPU here"):
        await mv.switch("llm", 2)
    engine.fail_versions = {1}
    with pytest.raises(VersionRefused, match=r"llm version 1 refused by Triton: .*INTERNAL"):
        await mv.switch("llm", 1)
    assert mv.loaded["llm"].version == 3
    engine.fail_versions = set()
    switched = await mv.switch("llm", 1)
    assert switched.version == 1 and engine.loads[-1] == [1]


async def test_start_up_fails_when_a_model_has_nothing_to_serve(tmp_path: Path) -> None:
    install_fake(tmp_path, "llm", 1, sku="a100-80gb", compute_capability="8.0", precision="bf16")
    mv = ModelVersions(tmp_path, FakeEngine(), hardware=Hardware((A100,)))  # type: ignore[arg-type]
    with pytest.raises(
        VersionRefused, match=r"llm: no installed version can run .*sized for 80 GB"
    ):
        await ModelVersions(
            tmp_path,
            FakeEngine(),  # type: ignore[arg-type]
            hardware=Hardware((GpuInfo("NVIDIA A100-SXM4-40GB", (8, 0), 40960),)),
        ).select_and_load()
    assert (await mv.select_and_load())["llm"].version == 1
