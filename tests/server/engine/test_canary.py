"""The canary's routing (engine/canary.py), its own Triton model (version_plan.py
`write_canary_alias`, model_versions.triton_config_json) and the CPU engine's per-version
parameters (triton_models/cpu_engine/versions.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.canary_records import canary_alias, write_canary_alias
from autoglm.build_engine.version_plan import Candidate, OverrideError, scan_repository
from autoglm.server.engine.canary import Route, VersionedEngine, bucket
from autoglm.server.engine.client import EngineRequest, EngineSampling
from autoglm.server.engine.lora import LoraTasks
from autoglm.server.engine.version_config import triton_config_json
from autoglm.triton_models.cpu_engine.versions import TEST_ONLY_FAIL, fails_on_purpose, for_version

PRINCIPALS = [f"tenant-{i}" for i in range(2000)]


@pytest.mark.parametrize("weight", [1, 10, 25, 50, 90, 99])
def test_split_is_within_three_points_of_the_weight(weight: int) -> None:
    route = Route("m", 1, 2, weight)
    on_canary = sum(route.version_for(p) == 2 for p in PRINCIPALS)
    assert abs(100 * on_canary / len(PRINCIPALS) - weight) <= 3, on_canary


def test_a_principal_always_gets_the_same_version() -> None:
    route = Route("m", 1, 2, 30)
    first = {p: route.version_for(p) for p in PRINCIPALS}
    assert all(route.version_for(p) == v for p, v in first.items())
    assert bucket("alice") == bucket("alice") and 0 <= bucket("alice") < 100
    # Raising the weight only adds principals to the canary: nobody moves back to stable.
    wider = Route("m", 1, 2, 60)
    assert all(wider.version_for(p) == 2 for p, v in first.items() if v == 2)


def test_the_stable_version_is_sent_as_built_and_the_canary_by_its_own_model() -> None:
    route = Route("m", 3)
    assert route.version_for("anyone") == 3 and route.engine_target("anyone") is None
    assert route.served() == (3,)
    canary = Route("m", 3, 4, 50, "m__canary")
    targets = {canary.engine_target(p) for p in PRINCIPALS[:50]}
    assert targets == {None, ("m__canary", "4")}
    assert canary.served() == (3, 4)


class Recorder:
    """Records what reaches the engine (a stand-in for EngineClient's two stream methods)."""

    def __init__(self) -> None:
        self.lora_tasks = LoraTasks()
        self.seen: list[tuple[str, str]] = []

    async def stream_into(self, request: object, *args: object, **kwargs: object) -> None:
        self.seen.append((request.triton_model, request.model_version))  # type: ignore[attr-defined]


async def test_a_versioned_engine_retargets_requests_and_keeps_its_own_lora_book() -> None:
    inner = Recorder()
    engine = VersionedEngine(inner, "m__canary", "4")
    sampling = EngineSampling(0.0, 1, 1.0, 1, 1.0)
    await engine.stream_into(EngineRequest("m", "r1", [1], 1, 2, 0, sampling), None)
    assert inner.seen == [("m__canary", "4")]
    # The task book is asked with the stable model's name (stream_with_lora reads it from the
    # request) but keyed by the canary's model: its executor has its own LoRA cache.
    engine.lora_tasks.mark_sent("m", 7)
    assert inner.lora_tasks.sent("m__canary", 7) and not inner.lora_tasks.sent("m", 7)


CONFIG = """
name: "m"
backend: "%s"
parameters { key: "hf_model_dir" value: { string_value: "%s" } }
parameters { key: "precision" value: { string_value: "fp32" } }
%s
"""


def version(tmp_path: Path, n: int, backend: str = "python", extra: str = "") -> Candidate:
    path = tmp_path / "m" / str(n)
    path.mkdir(parents=True)
    (path / mf.VERSION_CONFIG).write_text(CONFIG % (backend, path / "hf", extra))
    return Candidate("m", n, path, None)


def test_a_canary_is_its_own_triton_model_linking_to_the_installed_version(
    tmp_path: Path,
) -> None:
    version(tmp_path, 1)
    fail = f'parameters {{ key: "{TEST_ONLY_FAIL}" value: {{ string_value: "true" }} }}'
    canary = version(tmp_path, 2, "tensorrtllm", extra=fail)
    assert write_canary_alias(tmp_path, "m", 2) == canary_alias("m") == "m__canary"
    link = tmp_path / "m__canary" / "2"
    assert link.is_symlink() and link.resolve() == canary.path.resolve()
    assert not Path(link.readlink()).is_absolute()  # the repository may be mounted elsewhere
    # Scans skip it: it is not a model of its own to select versions for.
    assert {c.model for c in scan_repository(tmp_path)} == {"m"}
    # Another canary version replaces the link; the first one's link goes.
    write_canary_alias(tmp_path, "m", 1)
    assert sorted(p.name for p in (tmp_path / "m__canary").iterdir() if p.name.isdigit()) == ["1"]
    with pytest.raises(OverrideError, match="no installed version 9"):
        write_canary_alias(tmp_path, "m", 9)
    # Its config is the canary version's own (engine path, parameters), named for the alias,
    # with the fraction canary_fit planned.
    text = triton_config_json(canary, tmp_path / "m", kv_fraction=0.5, name="m__canary")
    config = json_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == "m__canary" and list(config.version_policy.specific.versions) == [2]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["hf_model_dir"] == str(canary.path / "hf")
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.5"
    assert fails_on_purpose(json.loads(text))


def test_a_model_named_like_an_alias_is_not_overwritten(tmp_path: Path) -> None:
    version(tmp_path, 1)
    taken = tmp_path / "m__canary" / "1"
    taken.mkdir(parents=True)
    (taken / "model.py").write_text("")
    with pytest.raises(OverrideError, match="is not a canary alias"):
        write_canary_alias(tmp_path, "m", 1)


def test_per_version_parameters_give_each_version_its_own_view() -> None:
    config = {
        "parameters": {
            "hf_model_dir": {"string_value": "/a"},
            "hf_model_dir@v2": {"string_value": "/b"},
        }
    }
    assert for_version(config, 1)["parameters"] == {"hf_model_dir": {"string_value": "/a"}}
    assert for_version(config, "2")["parameters"] == {"hf_model_dir": {"string_value": "/b"}}
    plain = {"parameters": {"x": {"string_value": "1"}}}
    assert for_version(plain, 3) == plain


def test_failure_switch_is_off_by_default() -> None:
    assert not fails_on_purpose({"parameters": {}}) and not fails_on_purpose({})
    off = {"parameters": {TEST_ONLY_FAIL: {"string_value": "false"}}}
    assert not fails_on_purpose(off)
