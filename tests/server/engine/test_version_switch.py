"""A switch that does not fit in GPU memory unloads first, and a failed load puts the old
version back (ModelVersions against a stand-in engine; the real Triton:
tests/integration/test_model_versions.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import service_pb2

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.gpus import GpuInfo
from autoglm.build_engine.manifest import Hardware, Manifest, Profile
from autoglm.build_engine.switch_plan import GIB, Footprint, SwitchPolicy
from autoglm.build_engine.version_plan import Candidate, scan_repository
from autoglm.server.engine.client import ModelControlError, RepositoryEntry, parse_stream_response
from autoglm.server.engine.model_versions import ModelVersions, VersionRefused
from autoglm.server.engine.text_request import parse_text_response
from autoglm.server.engine.version_config import version_footprint
from autoglm.server.errors import EngineFailure, EngineUnavailable

KEY = "kv_cache_free_gpu_mem_fraction"
H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 81559)
CONFIG = (
    'name: "llm"\nbackend: "tensorrtllm"\nmax_batch_size: 8\n'
    'parameters: { key: "kv_cache_free_gpu_mem_fraction" value: { string_value: "%s" } }\n'
)


def install(repo: Path, version: int, *, fraction: str = "0.9", tp: int = 1, **kw: object) -> Path:
    """A tensorrt_llm version for an H100: rank<N>.engine files of 1 KiB + N bytes."""
    vdir = repo / "llm" / str(version)
    vdir.mkdir(parents=True)
    for rank in range(tp):
        (vdir / f"rank{rank}.engine").write_bytes(b"\0" * (1024 + rank))
    (vdir / "config.json").write_text("{}")
    (vdir / mf.VERSION_CONFIG).write_text(CONFIG % fraction)
    fields: dict[str, object] = {
        "model": "llm", "sku": "h100-sxm", "compute_capability": "9.0", "precision": "fp8",
        "kv_cache_dtype": "fp8", "tp": tp, "pp": 1, "max_batch": 8, "max_input_len": 1024,
        "max_seq_len": 2048, "max_num_tokens": 4096, "profile": "latency", **kw,
    }  # fmt: skip
    mf.write(vdir, Manifest(Profile(**fields), mf.hash_tree(vdir)))  # type: ignore[arg-type]
    return vdir


class Engine:
    """TEST STAND-IN for EngineClient's model-control calls, recording their order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.configs: list[dict[str, Any]] = []
        self.state: dict[int, str] = {}
        self.fail_versions: set[int] = set()

    async def load_model(self, name: str, *, config_json: str | None = None) -> None:
        assert config_json is not None
        config = json.loads(config_json)
        self.configs.append(config)
        (version,) = (int(v) for v in config["version_policy"]["specific"]["versions"])
        self.calls.append(f"load {version}")
        if version in self.fail_versions:
            raise ModelControlError(f"RepositoryModelLoad {name}: INTERNAL: out of memory", None)
        self.state = {v: "UNAVAILABLE" for v in self.state} | {version: "READY"}

    async def unload_model(self, name: str, *, timeout: float = 120.0) -> None:
        self.calls.append("unload")
        self.state = {v: "UNAVAILABLE" for v in self.state}

    async def repository_index(self) -> list[RepositoryEntry]:
        return [RepositoryEntry("llm", str(v), s, "") for v, s in self.state.items()]

    async def model_ready(self, name: str, *, version: str = "", timeout: float = 2.0) -> bool:
        return self.state.get(int(version)) == "READY"


def versions(repo: Path, engine: Engine, **kw: object) -> ModelVersions:
    return ModelVersions(repo, engine, hardware=Hardware((H100,)), **kw)  # type: ignore[arg-type]


def test_footprint_from_engine_files_config_and_gpu(tmp_path: Path) -> None:
    install(tmp_path, 1, fraction="0.45", tp=2)
    (c,) = scan_repository(tmp_path)
    f = version_footprint(c, tmp_path / "llm", Hardware((H100,)))
    assert f == Footprint("tensorrt_llm", 2, 1025, 0.45, 81559 << 20)
    # No GPU detected (list-profiles on a build host): the SKU's memory with the tolerance.
    assert version_footprint(c, tmp_path / "llm", Hardware()).gpu_memory_bytes == int(
        80 * GIB * mf.MEMORY_TOLERANCE
    )


def test_footprint_of_an_unset_fraction_is_the_backend_default(tmp_path: Path) -> None:
    install(tmp_path, 1, fraction="${kv_cache_free_gpu_mem_fraction}")
    (c,) = scan_repository(tmp_path)
    assert version_footprint(c, tmp_path / "llm", Hardware((H100,))).fraction == 0.9


def test_footprint_of_cpu_and_vllm_versions() -> None:
    cpu = Profile("m", "cpu", "n/a", "fp32", "auto", 1, 1, 8, 1024, 2048, 4096, "default")
    c = Candidate("m", 1, Path("/nowhere"), Manifest(cpu, {}))
    assert version_footprint(c, Path("/nowhere"), Hardware((H100,))) == Footprint("cpu_reference")
    vllm = Profile("m", "h100-sxm", "9.0", "bf16", "auto", 1, 1, 8, 1024, 2048, 4096, "default",
                   engine="vllm")  # fmt: skip
    extra = {"engine_args": {"gpu_memory_utilization": 0.6}}
    c = Candidate("m", 1, Path("/nowhere"), Manifest(vllm, {}, extra=extra))
    f = version_footprint(c, Path("/nowhere"), Hardware((H100,)))
    assert (f.kind, f.fraction, f.weights_bytes) == ("vllm", 0.6, 0)


async def test_gpu_switch_that_does_not_fit_unloads_first(tmp_path: Path) -> None:
    """At the default fraction 0.9 the new executor would find ~10 % of the GPU: unload first."""
    install(tmp_path, 1)
    engine = Engine()
    mv = versions(tmp_path, engine)
    assert (await mv.select_and_load())["llm"].version == 1
    install(tmp_path, 2)
    assert (await mv.switch("llm", 2)).version == 2
    assert engine.calls == ["load 1", "unload", "load 2"]
    assert engine.state == {1: "UNAVAILABLE", 2: "READY"}


async def test_gpu_switch_that_fits_loads_beside(tmp_path: Path) -> None:
    install(tmp_path, 1, fraction="0.05")
    install(tmp_path, 2, fraction="0.05")
    engine = Engine()
    mv = versions(tmp_path, engine, switch_policy=SwitchPolicy(runtime_overhead_bytes=0))
    await mv.switch("llm", 1)
    assert (await mv.switch("llm", 2)).version == 2
    assert engine.calls == ["load 1", "load 2"]


async def test_failed_load_after_unload_reloads_the_old_version(tmp_path: Path) -> None:
    install(tmp_path, 1)
    install(tmp_path, 2)
    engine = Engine()
    mv = versions(tmp_path, engine)
    await mv.switch("llm", 1)
    engine.fail_versions = {2}
    with pytest.raises(
        VersionRefused,
        match=r"version 2 refused by Triton: .*out of memory; llm version 1 reloaded",
    ):
        await mv.switch("llm", 2)
    assert engine.calls == ["load 1", "unload", "load 2", "load 1"]
    assert mv.loaded["llm"].version == 1 and engine.state[1] == "READY"


async def test_failed_reload_too_says_the_model_is_not_loaded(tmp_path: Path) -> None:
    install(tmp_path, 1)
    install(tmp_path, 2)
    engine = Engine()
    mv = versions(tmp_path, engine)
    await mv.switch("llm", 1)
    engine.fail_versions = {1, 2}
    with pytest.raises(VersionRefused, match=r"reloading llm version 1 failed too .*not loaded"):
        await mv.switch("llm", 2)
    assert "llm" not in mv.loaded
    engine.fail_versions = set()
    assert (await mv.select_and_load())["llm"].version == 2  # the next reload starts afresh


async def test_reduced_fraction_is_sent_in_the_config_override(tmp_path: Path) -> None:
    install(tmp_path, 1)
    install(tmp_path, 2)
    engine = Engine()
    sizes = {1: Footprint("tensorrt_llm", 1, 8 * GIB, 0.5, 80 * GIB),
             2: Footprint("tensorrt_llm", 1, 8 * GIB, 0.9, 80 * GIB)}  # fmt: skip
    policy = SwitchPolicy(reduced_min_ratio=0.3, runtime_overhead_bytes=0)
    mv = versions(
        tmp_path,
        engine,
        switch_policy=policy,
        footprint_for_tests=lambda c: sizes[c.version or 0],
    )
    await mv.switch("llm", 1)
    await mv.switch("llm", 2)
    assert engine.calls == ["load 1", "load 2"]  # beside, with less KV memory
    first, last = (
        c["parameters"][KEY]["string_value"] for c in (engine.configs[0], engine.configs[-1])
    )
    assert first == "0.9"  # the first load: nothing beside it, the version's own fraction
    assert float(last) == pytest.approx(20.8 / 28)  # as in tests/build_engine/test_switch_plan.py


@pytest.mark.parametrize("parse", [parse_stream_response, parse_text_response])
def test_a_model_between_unload_and_load_is_unavailable_not_internal(parse: Any) -> None:
    """Triton's in-stream error for a model that is not loaded (the unload-first gap)."""
    gap = service_pb2.ModelStreamInferResponse(
        error_message="Request for unknown model: 'llm' has no available versions"
    )
    with pytest.raises(EngineUnavailable, match="has no available versions"):
        parse(gap)
    with pytest.raises(EngineFailure, match="CUDA error"):
        parse(service_pb2.ModelStreamInferResponse(error_message="CUDA error: out of memory"))


async def test_a_switch_that_cannot_be_planned_is_refused_and_the_old_version_serves(
    tmp_path: Path,
) -> None:
    install(tmp_path, 1)
    install(tmp_path, 2, fraction="1.5")  # a hand-edited config: no such fraction
    engine = Engine()
    mv = versions(tmp_path, engine)
    await mv.switch("llm", 1)
    with pytest.raises(VersionRefused, match=r"cannot plan the switch: new.fraction: 1.5"):
        await mv.switch("llm", 2)
    assert engine.calls == ["load 1"] and mv.loaded["llm"].version == 1
