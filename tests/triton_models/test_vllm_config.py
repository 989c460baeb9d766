"""Triton's vLLM-backend model for AutoGLM-Phone-9B: config.pbtxt declares exactly the tensor
contract, and model.json carries only allow-listed vLLM 0.19.0 engine arguments — every option
that lets the engine read files, fetch URLs, reach the Hub or import code is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.render import parse_model_config
from autoglm.triton_models.vllm import (
    ALLOWED_KEYS,
    ENGINE_ARGS_FILE,
    EXTRA_KEYS,
    FORBIDDEN,
    RENDERED_KEYS,
    EngineArgsError,
    VllmEngineConfig,
    check_engine_args,
    contract_mismatches,
    render_engine_args,
    render_vllm_model,
)

DATA = Path(__file__).parent / "data" / "vllm_0_19_0_engine_args.txt"
ENGINE_ARG_FIELDS = frozenset(
    line.strip() for line in DATA.read_text().splitlines() if line and not line.startswith("#")
)

# triton-inference-server/vllm_backend 8de0c14, src/model.py _auto_complete_inputs_and_outputs
# (name, data_type, dims, optional), without `embedding_request` (the embed task).
BACKEND_INPUTS = [
    ("text_input", "TYPE_STRING", [1], False),
    ("image", "TYPE_STRING", [-1], True),
    ("stream", "TYPE_BOOL", [1], True),
    ("sampling_parameters", "TYPE_STRING", [1], True),
    ("exclude_input_in_output", "TYPE_BOOL", [1], True),
    ("return_finish_reason", "TYPE_BOOL", [1], True),
    ("return_cumulative_logprob", "TYPE_BOOL", [1], True),
    ("return_logprobs", "TYPE_BOOL", [1], True),
    ("return_num_input_tokens", "TYPE_BOOL", [1], True),
    ("return_num_output_tokens", "TYPE_BOOL", [1], True),
]
BACKEND_OUTPUTS = [
    ("text_output", "TYPE_STRING", [-1]),
    ("finish_reason", "TYPE_STRING", [-1]),
    ("cumulative_logprob", "TYPE_FP32", [-1]),
    ("logprobs", "TYPE_STRING", [-1]),
    ("num_input_tokens", "TYPE_UINT32", [1]),
    ("num_output_tokens", "TYPE_UINT32", [-1]),
]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    d = tmp_path / "AutoGLM-Phone-9B"
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["Glm4vForConditionalGeneration"]}')
    return d


@pytest.fixture
def rendered(tmp_path: Path, ckpt: Path) -> tuple[Path, mc.ModelConfig]:
    repo = tmp_path / "repo"
    return repo, render_vllm_model(repo, VllmEngineConfig(model_dir=ckpt))


def test_config_is_the_backends_contract(rendered: tuple[Path, mc.ModelConfig]) -> None:
    repo, parsed = rendered
    # What Triton would read back from disk, parsed with its own ModelConfig proto.
    text = (repo / "autoglm-phone-9b" / "config.pbtxt").read_text()
    assert parse_model_config(text) == parsed
    assert parsed.backend == "vllm"
    assert parsed.max_batch_size == 0
    assert parsed.model_transaction_policy.decoupled
    assert [g.kind for g in parsed.instance_group] == [mc.ModelInstanceGroup.KIND_MODEL]
    inputs = [
        (t.name, mc.DataType.Name(t.data_type), list(t.dims), t.optional) for t in parsed.input
    ]
    outputs = [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in parsed.output]
    assert inputs == BACKEND_INPUTS
    assert outputs == BACKEND_OUTPUTS
    assert [t.name for t in parsed.input] == [t.name for t in vc.INPUTS]
    assert contract_mismatches(parsed) == []
    params = {k: v.string_value for k, v in parsed.parameters.items()}
    assert params == {"ENABLE_VLLM_HEALTH_CHECK": "true", "REPORT_CUSTOM_METRICS": "true"}


def test_contract_mismatches_name_each_difference(rendered: tuple[Path, mc.ModelConfig]) -> None:
    _, parsed = rendered
    broken = mc.ModelConfig()
    broken.CopyFrom(parsed)
    broken.max_batch_size = 8
    broken.model_transaction_policy.decoupled = False
    broken.input[1].data_type = mc.TYPE_UINT8  # image
    broken.input[2].optional = False  # stream
    del broken.output[4]  # num_input_tokens
    problems = contract_mismatches(broken)
    assert any("max_batch_size is 8" in p for p in problems)
    assert any("not decoupled" in p for p in problems)
    assert any("input 'image' is TYPE_UINT8 [-1]" in p for p in problems)
    assert any("input 'stream' optional=False" in p for p in problems)
    assert any("output 'num_input_tokens' is missing" in p for p in problems)
    assert len(problems) == 5


def test_engine_args_are_the_authors_flags_in_the_safe_form(ckpt: Path) -> None:
    args = json.loads(render_engine_args(VllmEngineConfig(model_dir=ckpt)))
    assert args["max_model_len"] == 25_480
    assert args["limit_mm_per_prompt"] == {"image": 10}
    assert args["mm_processor_kwargs"]["max_pixels"] == 5_000_000
    # GLM-4.1V's processor reads its budget from size.longest_edge.
    assert args["mm_processor_kwargs"]["size"] == {
        "shortest_edge": 112 * 112,
        "longest_edge": 5_000_000,
    }
    assert args["model"] == args["tokenizer"] == str(ckpt)
    assert args["trust_remote_code"] is False
    assert args["load_format"] == "safetensors"
    assert args["enforce_eager"] is False
    assert args["enable_log_requests"] is False
    assert "quantization" not in args  # bf16 unless the profile asks for fp8
    assert not set(args) & set(FORBIDDEN)


def test_every_key_is_a_vllm_0_19_engine_arg() -> None:
    # A misspelled key would make AsyncEngineArgs(**model.json) raise at load on the GPU host;
    # a misspelled forbidden key would refuse nothing.
    assert len(ENGINE_ARG_FIELDS) > 150
    assert ALLOWED_KEYS <= ENGINE_ARG_FIELDS, sorted(ALLOWED_KEYS - ENGINE_ARG_FIELDS)
    assert set(FORBIDDEN) <= ENGINE_ARG_FIELDS, sorted(set(FORBIDDEN) - ENGINE_ARG_FIELDS)
    assert not ALLOWED_KEYS & set(FORBIDDEN)
    assert {"allowed_local_media_path", "allowed_media_domains", "download_dir"} <= set(FORBIDDEN)


@pytest.mark.parametrize("key", sorted(FORBIDDEN))
def test_forbidden_options_are_refused_by_name(ckpt: Path, key: str) -> None:
    cfg = VllmEngineConfig(model_dir=ckpt, extra={key: "/"})
    with pytest.raises(EngineArgsError, match=f"engine arg '{key}' is refused: it "):
        cfg.engine_args()


def test_unknown_and_profile_keys_are_refused_as_extras(ckpt: Path) -> None:
    with pytest.raises(EngineArgsError, match="'swap_space' is not allowed"):
        VllmEngineConfig(model_dir=ckpt, extra={"swap_space": 4}).engine_args()
    with pytest.raises(EngineArgsError, match="'max_num_seqs' is set by the profile"):
        VllmEngineConfig(model_dir=ckpt, extra={"max_num_seqs": 4}).engine_args()
    args = VllmEngineConfig(model_dir=ckpt, extra={"block_size": 32}).engine_args()
    assert args["block_size"] == 32
    assert EXTRA_KEYS.isdisjoint(RENDERED_KEYS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trust_remote_code": True}, "'trust_remote_code' must be false"),
        ({"load_format": "auto"}, "'load_format' must be one of"),
        ({"load_format": "runai_streamer"}, "'load_format' must be one of"),
        ({"model": "zai-org/AutoGLM-Phone-9B"}, "'model' must be an absolute local path"),
        ({"tokenizer": "/elsewhere"}, "'tokenizer' must be the model folder"),
    ],
)
def test_refused_values(ckpt: Path, change: dict[str, object], message: str) -> None:
    args = {**VllmEngineConfig(model_dir=ckpt).engine_args(), **change}
    with pytest.raises(EngineArgsError, match=message):
        check_engine_args(args)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model_dir", Path("relative/dir"), "model_dir: .* must be an absolute path"),
        ("gpu_memory_utilization", 1.5, r"gpu_memory_utilization: 1.5 must be in \(0, 1\]"),
        ("quantization", "awq", "quantization: 'awq'"),
        ("kv_cache_dtype", "int8", "kv_cache_dtype: 'int8'"),
        ("max_num_seqs", 0, "max_num_seqs: 0 must be an integer >= 1"),
        ("model_name", "../x", "model_name"),
    ],
)
def test_bad_fields_name_the_field(ckpt: Path, field: str, value: object, message: str) -> None:
    cfg = VllmEngineConfig(**{"model_dir": ckpt, field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        cfg.engine_args()


def test_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"holds no config\.json"):
        VllmEngineConfig(model_dir=tmp_path).engine_args()


def test_nothing_is_written_when_refused(tmp_path: Path, ckpt: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(EngineArgsError):
        render_vllm_model(repo, VllmEngineConfig(model_dir=ckpt, extra={"download_dir": "/x"}))
    assert not repo.exists()


def test_render_writes_the_version_model_json(rendered: tuple[Path, mc.ModelConfig]) -> None:
    repo, _ = rendered
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert files == ["autoglm-phone-9b/1/model.json", "autoglm-phone-9b/config.pbtxt"]
    args = json.loads((repo / "autoglm-phone-9b" / "1" / ENGINE_ARGS_FILE).read_text())
    check_engine_args(args)
