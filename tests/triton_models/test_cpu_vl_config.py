"""The CPU engine for vision-language models: its Triton config renders strictly, holds exactly
the tensors of vllm_contract.py, and vllm_contract.py holds exactly the tensors of Triton's real
vLLM backend (the inputs/outputs lists of vllm_backend's src/model.py, vendored in
tests/data/vllm_backend_io.json)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.render import TEMPLATES, parse_model_config
from autoglm.triton_models.repository import CpuVlConfig, render_cpu_vl_model

MODEL = "glm41v_cpu"
BACKEND_IO = Path(__file__).parents[1] / "data" / "vllm_backend_io.json"
# Reserved by the backend for embedding requests of its OpenAI front end ("Triton client should
# never set this input"); the façade generates only.
NOT_IN_CONTRACT = {"embedding_request"}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf")
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, hf_dir: Path) -> tuple[Path, mc.ModelConfig]:
    repo = tmp_path_factory.mktemp("repo")
    return repo, render_cpu_vl_model(repo, CpuVlConfig(model_name=MODEL, hf_model_dir=hf_dir))


@pytest.fixture(scope="module")
def cpu(rendered: tuple[Path, mc.ModelConfig]) -> mc.ModelConfig:
    return rendered[1]


@pytest.fixture(scope="module")
def backend() -> dict[str, Any]:
    return json.loads(BACKEND_IO.read_text())


def dtype_name(tensor: mc.ModelInput | mc.ModelOutput) -> str:
    return mc.DataType.Name(tensor.data_type)


# --- vllm_contract.py is the real backend's contract --------------------------------------------


def test_vendored_file_names_its_source(backend: dict[str, Any]) -> None:
    assert backend["commit"].startswith("8de0c14")
    assert "vllm_backend" in backend["source"]
    assert any(
        "Redistribution and use in source and binary forms" in line for line in backend["license"]
    )


def test_contract_inputs_are_the_backend_inputs(backend: dict[str, Any]) -> None:
    theirs = [t for t in backend["inputs"] if t["name"] not in NOT_IN_CONTRACT]
    assert [t["name"] for t in theirs] == [s.name for s in vc.INPUTS]
    for spec, tensor in zip(vc.INPUTS, theirs, strict=True):
        assert spec.data_type == tensor["data_type"], spec.name
        assert list(spec.dims) == tensor["dims"], spec.name
        assert spec.optional == tensor.get("optional", False), spec.name


def test_contract_outputs_are_the_backend_outputs(backend: dict[str, Any]) -> None:
    assert [t["name"] for t in backend["outputs"]] == [s.name for s in vc.OUTPUTS]
    for spec, tensor in zip(vc.OUTPUTS, backend["outputs"], strict=True):
        assert spec.data_type == tensor["data_type"], spec.name
        assert list(spec.dims) == tensor["dims"], spec.name
        assert not spec.optional, spec.name


def test_left_out_inputs_are_optional(backend: dict[str, Any]) -> None:
    # The backend never needs them, so a request without them is one it accepts.
    left_out = [t for t in backend["inputs"] if t["name"] in NOT_IN_CONTRACT]
    assert [t["name"] for t in left_out] == sorted(NOT_IN_CONTRACT)
    assert all(t.get("optional") for t in left_out)


# --- the rendered config is the contract --------------------------------------------------------


def test_backend_batching_and_policy(cpu: mc.ModelConfig) -> None:
    assert cpu.name == MODEL
    assert cpu.backend == "python"
    # As the backend's auto-complete: no batch dimension (set_max_batch_size(0)), decoupled.
    assert cpu.max_batch_size == 0
    assert cpu.model_transaction_policy.decoupled is True


def test_inputs_are_exactly_the_contract(cpu: mc.ModelConfig) -> None:
    assert [t.name for t in cpu.input] == [s.name for s in vc.INPUTS]
    for spec, tensor in zip(vc.INPUTS, cpu.input, strict=True):
        assert dtype_name(tensor) == spec.data_type, spec.name
        assert tuple(tensor.dims) == spec.dims, spec.name
        assert tensor.optional == spec.optional, spec.name
        assert not tensor.HasField("reshape"), spec.name
        assert not tensor.allow_ragged_batch, spec.name


def test_outputs_are_exactly_the_contract(cpu: mc.ModelConfig) -> None:
    assert [t.name for t in cpu.output] == [s.name for s in vc.OUTPUTS]
    for spec, tensor in zip(vc.OUTPUTS, cpu.output, strict=True):
        assert dtype_name(tensor) == spec.data_type, spec.name
        assert tuple(tensor.dims) == spec.dims, spec.name


def test_instance_group_and_parameters(cpu: mc.ModelConfig, hf_dir: Path) -> None:
    [group] = cpu.instance_group
    assert (group.count, group.kind) == (1, mc.ModelInstanceGroup.KIND_CPU)
    params = {k: v.string_value for k, v in cpu.parameters.items()}
    assert params == {
        "hf_model_dir": str(hf_dir.resolve()),
        "max_concurrency": "4",
        "torch_threads": "1",
    }


def test_files_written(rendered: tuple[Path, mc.ModelConfig]) -> None:
    repo, parsed = rendered
    root = repo / MODEL
    assert sorted(p.name for p in root.iterdir()) == ["1", "config.pbtxt"]
    copied = root / "1" / "model.py"
    assert not copied.is_symlink()
    assert copied.read_bytes() == (TEMPLATES / "cpu_vl" / "1" / "model.py").read_bytes()
    text = (root / "config.pbtxt").read_text()
    assert "${" not in text
    assert parse_model_config(text) == parsed


def test_custom_values_and_version(tmp_path: Path, hf_dir: Path) -> None:
    cfg = CpuVlConfig(
        model_name="vl2",
        hf_model_dir=hf_dir,
        instance_count=2,
        max_concurrency=3,
        torch_threads=2,
        version=5,
    )
    parsed = render_cpu_vl_model(tmp_path, cfg)
    assert parsed.instance_group[0].count == 2
    assert parsed.parameters["max_concurrency"].string_value == "3"
    assert parsed.parameters["torch_threads"].string_value == "2"
    assert (tmp_path / "vl2" / "5" / "model.py").is_file()
    assert not (tmp_path / "vl2" / "1").exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_name": ""}, "model_name"),
        ({"model_name": "../x"}, "model_name"),
        ({"instance_count": 0}, "instance_count"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"version": 0}, "version"),
        ({"hf_model_dir": Path('/a"b')}, "hf_model_dir"),
        ({"hf_model_dir": Path("/nonexistent/hf")}, "hf_model_dir"),
    ],
)
def test_validate_names_the_field(
    hf_dir: Path, tmp_path: Path, overrides: dict[str, object], field: str
) -> None:
    cfg = dataclasses.replace(CpuVlConfig(model_name=MODEL, hf_model_dir=hf_dir), **overrides)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        render_cpu_vl_model(tmp_path, cfg)
    assert list(tmp_path.iterdir()) == []  # nothing written
