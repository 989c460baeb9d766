"""The LoRA side of the engine configs: the tensorrt_llm template's LoRA inputs are the contract
(lora_contract.py), its LoRA cache parameters render and parse with Triton's ModelConfig proto,
and the CPU reference engine declares the same three inputs. No GPU needed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models.render import TEMPLATES, parse_model_config
from autoglm.triton_models.tensorrt_llm import TensorRTLLMConfig

ENGINE_DIR = Path("/models/engines/smollm2-135m/fp16/tp1")


def _render(tmp_path: Path, **changes: object) -> mc.ModelConfig:
    config = dataclasses.replace(TensorRTLLMConfig(engine_dir=ENGINE_DIR), **changes)
    return parse_model_config(config.render(tmp_path / "tensorrt_llm").read_text())


def _inputs(config: mc.ModelConfig) -> dict[str, mc.ModelInput]:
    return {t.name: t for t in config.input}


def _check_lora_inputs(config: mc.ModelConfig) -> None:
    inputs = _inputs(config)
    for spec in lc.LORA_INPUTS:
        tensor = inputs[spec.name]
        assert mc.DataType.Name(tensor.data_type) == spec.data_type, spec.name
        assert tuple(tensor.dims) == spec.dims, spec.name
        assert tensor.optional is True, spec.name
    # A scalar per request, as every [1] input of the backend.
    assert list(inputs["lora_task_id"].reshape.shape) == []
    assert inputs["lora_weights"].allow_ragged_batch and inputs["lora_config"].allow_ragged_batch


def test_tensorrt_llm_lora_inputs_are_the_contract(tmp_path: Path) -> None:
    _check_lora_inputs(_render(tmp_path))


def test_cpu_reference_declares_the_same_lora_inputs() -> None:
    text = (TEMPLATES / "cpu_reference" / "config.pbtxt").read_text()
    values = {
        "model_name": "m",
        "max_batch_size": "8",
        "instance_count": "1",
        "hf_model_dir": "/m",
        "max_concurrency": "1",
        "torch_threads": "1",
        "precision": "fp32",
        "fake_quant_dir": "",
        "max_input_len": "",
        "lora_cache_size": "8",
    }
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    _check_lora_inputs(parse_model_config(text))


def test_lora_cache_parameters_default_to_the_backends(tmp_path: Path) -> None:
    params = {k: v.string_value for k, v in _render(tmp_path).parameters.items()}
    # getPeftCacheConfigFromParams's defaults (model_instance_state.cc).
    assert params["lora_cache_optimal_adapter_size"] == "8"
    assert params["lora_cache_max_adapter_size"] == "64"
    assert params["lora_cache_gpu_memory_fraction"] == "0.05"
    assert params["lora_cache_host_memory_bytes"] == str(1 << 30)
    assert "lora_prefetch_dir" not in params  # left to the backend: no prefetch


def test_lora_cache_parameters_render(tmp_path: Path) -> None:
    config = _render(
        tmp_path,
        lora_cache_optimal_adapter_size=16,
        lora_cache_max_adapter_size=128,
        lora_cache_gpu_memory_fraction=0.2,
        lora_cache_host_memory_bytes=4 << 30,
    )
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["lora_cache_max_adapter_size"] == "128"
    assert params["lora_cache_gpu_memory_fraction"] == "0.2"
    assert params["lora_cache_host_memory_bytes"] == str(4 << 30)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lora_cache_optimal_adapter_size": 0}, "lora_cache_optimal_adapter_size"),
        ({"lora_cache_max_adapter_size": 4}, "lora_cache_max_adapter_size"),
        ({"lora_cache_gpu_memory_fraction": 0.0}, "lora_cache_gpu_memory_fraction"),
        ({"lora_cache_gpu_memory_fraction": 1.5}, "lora_cache_gpu_memory_fraction"),
        ({"lora_cache_host_memory_bytes": 0}, "lora_cache_host_memory_bytes"),
    ],
)
def test_bad_lora_cache_values_name_the_field(changes: dict[str, object], field: str) -> None:
    config = dataclasses.replace(TensorRTLLMConfig(engine_dir=ENGINE_DIR), **changes)
    with pytest.raises(ValueError, match=field):
        config.validate()
