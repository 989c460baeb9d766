"""The GPU engine's Triton config (tensorrt_llm/config.pbtxt): renders strictly, parses with
Triton's ModelConfig proto, and carries the façade's tensor contract unchanged. No GPU needed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from autoglm.triton_models import contract
from autoglm.triton_models.render import TemplateError, render_config
from autoglm.triton_models.tensorrt_llm import TEMPLATE, TensorRTLLMConfig

ENGINE_DIR = Path("/models/engines/smollm2-135m/fp16/tp1")


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    _, parsed = render_config(path, {})  # a rendered file has no placeholders left
    return parsed


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> model_config_pb2.ModelConfig:
    path = TensorRTLLMConfig(engine_dir=ENGINE_DIR).render(tmp_path_factory.mktemp("trtllm"))
    return _parse(path)


def _params(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def _tensors(specs) -> dict[str, object]:
    return {t.name: t for t in specs}


def test_render_writes_config_pbtxt(tmp_path: Path) -> None:
    path = TensorRTLLMConfig(engine_dir=ENGINE_DIR).render(tmp_path / "tensorrt_llm")
    assert path == tmp_path / "tensorrt_llm" / "config.pbtxt"
    assert "${" not in path.read_text()


def test_defaults_parse_as_tensorrtllm_model(rendered: model_config_pb2.ModelConfig) -> None:
    assert rendered.name == "tensorrt_llm"
    assert rendered.backend == "tensorrtllm"
    assert rendered.max_batch_size == 64
    assert list(rendered.dynamic_batching.preferred_batch_size) == [64]
    assert rendered.model_transaction_policy.decoupled is True


def test_gpt_model_path_is_engine_dir(rendered: model_config_pb2.ModelConfig) -> None:
    assert _params(rendered)["gpt_model_path"] == str(ENGINE_DIR)


def test_default_parameters(rendered: model_config_pb2.ModelConfig) -> None:
    params = _params(rendered)
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert params["enable_kv_cache_reuse"] == "true"
    assert params["exclude_input_in_output"] == "true"
    assert params["cancellation_check_period_ms"] == "100"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert params["max_beam_width"] == "1"
    assert params["gpu_device_ids"] == "0"
    # log P(token | vocab), as the CPU engine reports it (the backend's default would be true).
    assert params["normalize_log_probs"] == "false"
    # Read by the backend outside any try/catch: must be present (empty = no guided decoding).
    for key in ("tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"):
        assert params[key] == ""


@pytest.mark.parametrize("spec", contract.INPUTS, ids=lambda t: t.name)
def test_contract_inputs_match(rendered: model_config_pb2.ModelConfig, spec) -> None:
    tensor = _tensors(rendered.input).get(spec.name)
    assert tensor is not None, f"input {spec.name} missing from config.pbtxt"
    assert model_config_pb2.DataType.Name(tensor.data_type) == spec.data_type
    assert tuple(tensor.dims) == spec.dims
    assert tensor.optional == spec.optional


@pytest.mark.parametrize("spec", contract.OUTPUTS, ids=lambda t: t.name)
def test_contract_outputs_match(rendered: model_config_pb2.ModelConfig, spec) -> None:
    tensor = _tensors(rendered.output).get(spec.name)
    assert tensor is not None, f"output {spec.name} missing from config.pbtxt"
    assert model_config_pb2.DataType.Name(tensor.data_type) == spec.data_type
    assert tuple(tensor.dims) == spec.dims


def test_real_file_tensors_kept(rendered: model_config_pb2.ModelConfig) -> None:
    # Counts of TensorRT-LLM 1.2.0rc8's file; only input_lengths/request_output_len required.
    assert len(rendered.input) == 62
    assert len(rendered.output) == 21
    required = {t.name for t in rendered.input if not t.optional}
    assert required == {"input_lengths", "request_output_len"}
    inputs = _tensors(rendered.input)
    assert inputs["input_ids"].allow_ragged_batch
    assert list(inputs["input_lengths"].reshape.shape) == []
    assert inputs["input_lengths"].HasField("reshape")
    assert model_config_pb2.DataType.Name(inputs["draft_logits"].data_type) == "TYPE_FP32"
    assert model_config_pb2.DataType.Name(inputs["prompt_embedding_table"].data_type) == (
        "TYPE_FP16"
    )


def test_non_default_values(tmp_path: Path) -> None:
    config = TensorRTLLMConfig(
        engine_dir=ENGINE_DIR,
        model_name="llama_fp8",
        decoupled=False,
        triton_max_batch_size=8,
        batch_scheduler_policy="max_utilization",
        kv_cache_free_gpu_mem_fraction=1,
        enable_chunked_context=True,
        gpu_device_ids=(0, 1),
    )
    parsed = _parse(config.render(tmp_path))
    params = _params(parsed)
    assert parsed.name == "llama_fp8"
    assert parsed.max_batch_size == 8
    assert parsed.model_transaction_policy.decoupled is False
    assert params["batch_scheduler_policy"] == "max_utilization"
    assert params["kv_cache_free_gpu_mem_fraction"] == "1.0"
    assert params["enable_chunked_context"] == "true"
    assert params["gpu_device_ids"] == "0,1"


def test_values_cover_every_placeholder() -> None:
    # Strict rendering of the raw template with exactly values(): nothing missing, nothing left.
    render_config(TEMPLATE, TensorRTLLMConfig(engine_dir=ENGINE_DIR).values())


def test_missing_placeholder_raises_template_error() -> None:
    values = TensorRTLLMConfig(engine_dir=ENGINE_DIR).values()
    del values["engine_dir"]
    with pytest.raises(TemplateError, match="engine_dir"):
        render_config(TEMPLATE, values)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("batching_strategy", "dynamic"),
        ("batch_scheduler_policy", "fifo"),
        ("kv_cache_free_gpu_mem_fraction", 0.0),
        ("kv_cache_free_gpu_mem_fraction", 1.5),
        ("kv_cache_free_gpu_mem_fraction", float("nan")),
        ("triton_max_batch_size", 0),
        ("max_beam_width", 0),
        ("cancellation_check_period_ms", 0),
        ("max_queue_delay_microseconds", -1),
        ("max_queue_size", -1),
        ("decoupled", "yes"),
        ("enable_kv_cache_reuse", 1),
        ("gpu_device_ids", ()),
        ("gpu_device_ids", (0, 0)),
        ("gpu_device_ids", (-1,)),
        ("model_name", "bad name"),
        ("engine_dir", Path('/models/"quoted"')),
        ("logits_datatype", "FP32"),
    ],
)
def test_invalid_values_raise_naming_the_field(field: str, bad: object, tmp_path: Path) -> None:
    config = dataclasses.replace(TensorRTLLMConfig(engine_dir=ENGINE_DIR), **{field: bad})
    with pytest.raises(ValueError, match=f"^{field}:"):
        config.validate()
    with pytest.raises(ValueError, match=f"^{field}:"):
        config.render(tmp_path)
    assert not (tmp_path / "config.pbtxt").exists()
