"""The CPU reference engine's Triton config: renders strictly, implements exactly the tensor
contract, and cannot drift from the GPU (`tensorrtllm`) config for any contract tensor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from autoglm.triton_models import contract, lora_contract
from autoglm.triton_models.render import TEMPLATES, parse_model_config
from autoglm.triton_models.repository import CpuEngineConfig, render_cpu_model
from autoglm.triton_models.tensorrt_llm import TensorRTLLMConfig

MODEL = "smollm2_cpu"


@pytest.fixture(scope="module")
def rendered(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> tuple[Path, mc.ModelConfig]:
    repo = tmp_path_factory.mktemp("repo")
    parsed = render_cpu_model(repo, CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir))
    return repo, parsed


@pytest.fixture(scope="module")
def cpu(rendered: tuple[Path, mc.ModelConfig]) -> mc.ModelConfig:
    return rendered[1]


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> mc.ModelConfig:
    cfg = TensorRTLLMConfig(engine_dir=Path("/engines/smollm2/tp1"))
    path = cfg.render(tmp_path_factory.mktemp("trtllm"))
    return parse_model_config(path.read_text(), source=str(path))


def by_name(tensors: list[mc.ModelInput] | list[mc.ModelOutput]) -> dict[str, object]:
    return {t.name: t for t in tensors}


def dtype_name(tensor: mc.ModelInput | mc.ModelOutput) -> str:
    return mc.DataType.Name(tensor.data_type)


def signature(tensor: mc.ModelInput) -> tuple[object, ...]:
    """Everything about an input that a caller depends on."""
    reshape = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
    return (
        dtype_name(tensor),
        tuple(tensor.dims),
        tensor.optional,
        reshape,
        tensor.allow_ragged_batch,
    )


# --- the CPU config itself -------------------------------------------------------------------


def test_backend_and_policy(cpu: mc.ModelConfig) -> None:
    assert cpu.name == MODEL
    assert cpu.backend == "python"
    assert cpu.model_transaction_policy.decoupled is True
    assert cpu.max_batch_size == 8


def test_instance_group_and_parameters(cpu: mc.ModelConfig, model_dir: Path) -> None:
    [group] = cpu.instance_group
    assert group.count == 1
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU
    params = {k: v.string_value for k, v in cpu.parameters.items()}
    assert params == {
        "hf_model_dir": str(model_dir.resolve()),
        "max_concurrency": "4",
        "torch_threads": "1",
        "precision": "fp32",
        "fake_quant_dir": "",
        "max_input_len": "",  # no limit but the model's
        "lora_cache_size": "8",  # adapters kept by task id (cpu_engine/lora.py)
    }


def test_inputs_are_exactly_the_contract(cpu: mc.ModelConfig) -> None:
    # The façade's tensors, then the optional LoRA ones (lora_contract.py).
    specs = contract.INPUTS + lora_contract.LORA_INPUTS
    assert [t.name for t in cpu.input] == [t.name for t in specs]
    for spec in specs:
        tensor = by_name(cpu.input)[spec.name]
        assert dtype_name(tensor) == spec.data_type, spec.name
        assert tuple(tensor.dims) == spec.dims, spec.name
        assert tensor.optional == spec.optional, spec.name


def test_outputs_are_exactly_the_contract(cpu: mc.ModelConfig) -> None:
    assert [t.name for t in cpu.output] == [t.name for t in contract.OUTPUTS]
    for spec in contract.OUTPUTS:
        tensor = by_name(cpu.output)[spec.name]
        assert dtype_name(tensor) == spec.data_type, spec.name
        assert tuple(tensor.dims) == spec.dims, spec.name


def test_scalar_inputs_are_reshaped_to_scalars(cpu: mc.ModelConfig) -> None:
    # dims [1] reshaped to [] as in TensorRT-LLM: the model sees one value per request.
    for tensor in cpu.input:
        if tuple(tensor.dims) == (1,):
            assert tensor.HasField("reshape"), tensor.name
            assert list(tensor.reshape.shape) == [], tensor.name
        else:
            assert not tensor.HasField("reshape"), tensor.name


def test_files_written(rendered: tuple[Path, mc.ModelConfig]) -> None:
    repo, parsed = rendered
    root = repo / MODEL
    assert sorted(p.name for p in root.iterdir()) == ["1", "config.pbtxt"]
    src = TEMPLATES / "cpu_reference" / "1" / "model.py"
    copied = root / "1" / "model.py"
    assert copied.is_file()
    assert not copied.is_symlink()
    assert copied.read_bytes() == src.read_bytes()
    text = (root / "config.pbtxt").read_text()
    assert "${" not in text
    assert parse_model_config(text) == parsed


def test_custom_values_and_version(tmp_path: Path, model_dir: Path) -> None:
    cfg = CpuEngineConfig(
        model_name="m2",
        hf_model_dir=model_dir,
        instance_count=3,
        max_concurrency=2,
        torch_threads=4,
        max_batch_size=16,
        version=7,
        max_input_len=1024,
    )
    parsed = render_cpu_model(tmp_path, cfg)
    assert parsed.parameters["max_input_len"].string_value == "1024"
    assert parsed.name == "m2"
    assert parsed.max_batch_size == 16
    assert parsed.instance_group[0].count == 3
    assert parsed.parameters["max_concurrency"].string_value == "2"
    assert parsed.parameters["torch_threads"].string_value == "4"
    assert (tmp_path / "m2" / "7" / "model.py").is_file()
    assert not (tmp_path / "m2" / "1").exists()


def test_rerender_replaces_the_config(tmp_path: Path, model_dir: Path) -> None:
    render_cpu_model(tmp_path, CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir))
    cfg = CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir, instance_count=2)
    render_cpu_model(tmp_path, cfg)
    text = (tmp_path / MODEL / "config.pbtxt").read_text()
    assert parse_model_config(text).instance_group[0].count == 2
    assert not (tmp_path / MODEL / "config.pbtxt.tmp").exists()


# --- the CPU and GPU configs cannot drift ------------------------------------------------------


@pytest.mark.parametrize("spec", contract.INPUTS, ids=lambda s: s.name)
def test_cpu_input_matches_gpu(cpu: mc.ModelConfig, gpu: mc.ModelConfig, spec: object) -> None:
    name = spec.name  # type: ignore[attr-defined]
    assert signature(by_name(cpu.input)[name]) == signature(by_name(gpu.input)[name])


@pytest.mark.parametrize("spec", contract.OUTPUTS, ids=lambda s: s.name)
def test_cpu_output_matches_gpu(cpu: mc.ModelConfig, gpu: mc.ModelConfig, spec: object) -> None:
    name = spec.name  # type: ignore[attr-defined]
    cpu_out, gpu_out = by_name(cpu.output)[name], by_name(gpu.output)[name]
    assert (dtype_name(cpu_out), tuple(cpu_out.dims)) == (dtype_name(gpu_out), tuple(gpu_out.dims))


def test_both_engines_are_decoupled(cpu: mc.ModelConfig, gpu: mc.ModelConfig) -> None:
    # The façade streams with ModelStreamInfer against either engine.
    assert cpu.model_transaction_policy.decoupled == gpu.model_transaction_policy.decoupled


def test_gpu_required_inputs_are_all_in_the_contract(gpu: mc.ModelConfig) -> None:
    # The CPU engine must accept every request the GPU engine accepts without optional extras.
    required = {t.name for t in gpu.input if not t.optional}
    assert required <= set(contract.INPUTS_BY_NAME)


# --- CpuEngineConfig.validate ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_name": ""}, "model_name"),
        ({"model_name": "a/b"}, "model_name"),
        ({"instance_count": 0}, "instance_count"),
        ({"instance_count": -1}, "instance_count"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"version": 0}, "version"),
        ({"max_input_len": 0}, "max_input_len"),
        ({"precision": "fp8"}, "fake_quant_dir"),
        ({"fake_quant_dir": Path("/v/1/fake_quant")}, "fake_quant_dir"),
        ({"precision": "fp8", "fake_quant_dir": Path('/a"b')}, "fake_quant_dir"),
    ],
)
def test_validate_names_the_field(
    model_dir: Path, tmp_path: Path, overrides: dict[str, object], field: str
) -> None:
    cfg = dataclasses.replace(
        CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir), **overrides
    )
    with pytest.raises(ValueError, match=rf"^{field}:"):
        cfg.validate()
    with pytest.raises(ValueError, match=rf"^{field}:"):
        render_cpu_model(tmp_path, cfg)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_missing_config_json(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer.json").write_text("{}")
    cfg = CpuEngineConfig(model_name=MODEL, hf_model_dir=hf)
    with pytest.raises(ValueError, match=r"^hf_model_dir:.*config\.json"):
        cfg.validate()
    with pytest.raises(ValueError, match=r"^hf_model_dir:"):
        CpuEngineConfig(model_name=MODEL, hf_model_dir=tmp_path / "absent").validate()


def test_valid_config_validates(model_dir: Path) -> None:
    CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir).validate()


def test_fake_quant_parameters(model_dir: Path, tmp_path: Path) -> None:
    fq = tmp_path / "repo" / MODEL / "1" / "fake_quant"
    cfg = CpuEngineConfig(
        model_name=MODEL, hf_model_dir=model_dir, precision="fp8", fake_quant_dir=fq
    )
    parsed = render_cpu_model(tmp_path / "repo", cfg)
    assert parsed.parameters["precision"].string_value == "fp8"
    assert parsed.parameters["fake_quant_dir"].string_value == str(fq)


@pytest.mark.parametrize("name", ["..", ".", 'a"b'])
def test_unsafe_model_names_are_rejected(model_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"^model_name:"):
        CpuEngineConfig(model_name=name, hf_model_dir=model_dir).validate()
