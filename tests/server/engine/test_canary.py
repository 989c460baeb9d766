"""The canary's routing (engine/canary.py), its shared config (model_versions.canary_config_json)
and the CPU engine's per-version parameters (triton_models/cpu_engine/versions.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.version_plan import Candidate
from autoglm.server.engine.canary import Route, bucket
from autoglm.server.engine.model_versions import VersionRefused, canary_config_json
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


def test_without_a_canary_triton_picks_and_the_stable_is_reported() -> None:
    route = Route("m", 3)
    assert route.version_for("anyone") == 3 and route.engine_version("anyone") == ""
    assert route.served() == (3,)
    canary = Route("m", 3, 4, 50)
    assert {canary.engine_version(p) for p in PRINCIPALS[:50]} == {"3", "4"}
    assert canary.served() == (3, 4)


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


def test_shared_config_carries_the_canarys_own_parameters(tmp_path: Path) -> None:
    stable = version(tmp_path, 1)
    fail = f'parameters {{ key: "{TEST_ONLY_FAIL}" value: {{ string_value: "true" }} }}'
    canary = version(tmp_path, 2, extra=fail)
    text = canary_config_json(stable, canary, tmp_path / "m")
    config = json_format.Parse(text, model_config_pb2.ModelConfig())
    assert list(config.version_policy.specific.versions) == [1, 2]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["hf_model_dir"] == str(stable.path / "hf")
    assert params["hf_model_dir@v2"] == str(canary.path / "hf")
    assert params[f"{TEST_ONLY_FAIL}@v2"] == "true" and "precision@v2" not in params
    # Each version of the CPU engine reads its own view (Triton's JSON form of the config).
    as_json = json.loads(text)
    v1, v2 = for_version(as_json, "1"), for_version(as_json, 2)
    assert v1["parameters"]["hf_model_dir"]["string_value"] == str(stable.path / "hf")
    assert v2["parameters"]["hf_model_dir"]["string_value"] == str(canary.path / "hf")
    assert not any("@v" in k for k in (*v1["parameters"], *v2["parameters"]))
    assert not fails_on_purpose(v1) and fails_on_purpose(v2)


def test_backend_with_one_config_is_refused_a_canary_whose_parameters_differ(
    tmp_path: Path,
) -> None:
    stable, canary = version(tmp_path, 1, "tensorrtllm"), version(tmp_path, 2, "tensorrtllm")
    with pytest.raises(VersionRefused, match=r"backend 'tensorrtllm'.*\(hf_model_dir\)"):
        canary_config_json(stable, canary, tmp_path / "m")


def test_failure_switch_is_off_by_default() -> None:
    assert not fails_on_purpose({"parameters": {}}) and not fails_on_purpose({})
    off = {"parameters": {TEST_ONLY_FAIL: {"string_value": "false"}}}
    assert not fails_on_purpose(off)


def test_an_ended_canary_still_unloading_keeps_the_stable_version_named() -> None:
    """Triton sends requests that name no version to the highest loaded one: while an ended
    canary unloads, that is the canary, so the stable version is named (Route.explicit)."""
    leaving = Route("m", 1, explicit=True)
    assert leaving.engine_version("anyone") == "1" and leaving.served() == (1,)
