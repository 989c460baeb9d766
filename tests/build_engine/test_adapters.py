"""The LoRA adapter registry (build_engine/adapters.py) on a real PEFT adapter of SmolLM2.

The adapter is made in-process with PEFT (build_engine/tiny_lora.py); the checks, the
conversion to TensorRT-LLM's arrays and back, the sha256 verification and the task ids are
tested on it, plus the pure checks on hand-written configs for each refusal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from autoglm.build_engine import adapters as ad
from autoglm.build_engine.cli import main
from autoglm.build_engine.tiny_lora import make_adapter
from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models import lora_format
from autoglm.triton_models.refusal import Refusal

BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(model_dir, tmp_path_factory.mktemp("lora") / "a", seed=1)


@pytest.fixture(scope="module")
def other_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(
        model_dir, tmp_path_factory.mktemp("lora") / "b", seed=2, targets=("o_proj", "up_proj")
    )


@pytest.fixture(scope="module")
def base(model_dir: Path) -> ad.BaseModel:
    return ad.read_base(model_dir)


def test_base_modules_read_from_headers(base: ad.BaseModel) -> None:
    assert base.architecture == "LlamaForCausalLM"
    assert base.num_layers == 30
    # SmolLM2-135M: hidden 576, 9 heads x 64, 3 kv heads x 64, intermediate 1536.
    assert base.modules["q_proj"] == (576, 576)
    assert base.modules["v_proj"] == (576, 192)
    assert base.modules["down_proj"] == (1536, 576)


def _config(**overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "bias": "none",
    }
    config.update(overrides)
    return config


def _tensors(rank: int = 4, dtype: str = "float16") -> dict[str, tuple[tuple[int, ...], str]]:
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    return {key.format("A"): ((rank, 576), dtype), key.format("B"): ((576, rank), dtype)}


def test_check_accepts_and_scales(base: ad.BaseModel) -> None:
    assert ad.check(_config(), _tensors(), base) == (4, ("q_proj",), 2.0)
    _, _, scale = ad.check(_config(use_rslora=True), _tensors(), base)
    assert scale == pytest.approx(8 / 2)


@pytest.mark.parametrize(
    ("overrides", "tensors", "field"),
    [
        ({"peft_type": "IA3"}, None, "peft_type"),
        ({"r": 0}, None, "r:"),
        ({"r": 128}, _tensors(128), "r:"),
        ({"lora_alpha": -1}, None, "lora_alpha"),
        ({"use_dora": True}, None, "use_dora"),
        ({"bias": "all"}, None, "bias"),
        ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
        ({"base_model_name_or_path": "Qwen/Qwen2-0.5B"}, None, "base_model_name_or_path"),
        ({"target_modules": ["c_attn"]}, None, "target_modules"),
        ({"target_modules": ["qkv_proj"]}, None, "target_modules"),
        ({}, _tensors(dtype="int8"), "dtype"),
        ({}, _tensors(rank=8), "shape"),
        ({"target_modules": ["v_proj"]}, None, "not in target_modules"),
    ],
)
def test_check_refusals_name_the_field(
    base: ad.BaseModel,
    overrides: dict[str, object],
    tensors: dict[str, tuple[tuple[int, ...], str]] | None,
    field: str,
) -> None:
    with pytest.raises(ad.AdapterError, match=field):
        ad.check(_config(**overrides), tensors or _tensors(), base)


def test_check_refuses_a_layer_the_base_lacks(base: ad.BaseModel) -> None:
    key = "base_model.model.model.layers.30.self_attn.q_proj.lora_{}.weight"
    tensors = {key.format("A"): ((4, 576), "float16"), key.format("B"): ((576, 4), "float16")}
    with pytest.raises(ad.AdapterError, match="layer 30"):
        ad.check(_config(), tensors, base)


def test_conversion_round_trip_equals_the_peft_weights(
    adapter_dir: Path, base: ad.BaseModel
) -> None:
    state = load_file(str(adapter_dir / ad.WEIGHTS_FILE))
    config = json.loads((adapter_dir / ad.CONFIG_FILE).read_text())
    scale = config["lora_alpha"] / config["r"]
    modules = lora_format.peft_modules(state)
    assert len(modules) == 2 * 30  # q_proj and v_proj of every layer
    for dtype, tol in ((np.float32, 0.0), (np.float16, 1e-3)):
        weights, lora_config = lora_format.to_trtllm(modules, scale=scale, dtype=dtype)
        assert weights.shape == (1, 60, 8 * 576 + 576 * 8) and weights.dtype == dtype
        assert lora_config.shape == (1, 60, 3) and lora_config.dtype == np.int32
        # Rows sorted by (layer, module id): attn_q (1) before attn_v (3).
        assert lora_config[0, :2].tolist() == [[1, 0, 8], [3, 0, 8]]
        rebuilt = lora_format.from_trtllm(
            weights, lora_config, dims=base.modules, num_layers=30, max_rank=64
        )
        assert rebuilt.keys() == modules.keys()
        for key, (a, b) in modules.items():
            got_a, got_b = rebuilt[key]
            np.testing.assert_allclose(got_a, a, rtol=tol, atol=tol)
            np.testing.assert_allclose(got_b, b * scale, rtol=tol, atol=tol)


def test_from_trtllm_refusals_name_the_tensor(base: ad.BaseModel) -> None:
    weights = np.zeros((1, 1, 8 * 576 * 2), dtype=np.float16)
    cases = [
        (np.array([[[9, 0, 8]]], np.int32), weights, "lora_config"),  # unknown module
        (np.array([[[1, 30, 8]]], np.int32), weights, "lora_config"),  # layer
        (np.array([[[1, 0, 65]]], np.int32), weights, "lora_config"),  # rank
        (np.array([[[1, 0, 8]]], np.int32), weights[:, :, :100], "lora_weights"),  # short
        (np.array([[[1, 0, 8], [1, 0, 8]]], np.int32), weights, "lora_weights"),  # rows
    ]
    for config, w, tensor in cases:
        with pytest.raises(Refusal, match=f"'{tensor}'"):
            lora_format.from_trtllm(w, config, dims=base.modules, num_layers=30, max_rank=64)


def test_add_records_sha256_and_a_stable_task_id(
    tmp_path: Path, model_dir: Path, adapter_dir: Path, other_dir: Path
) -> None:
    registry = tmp_path / "adapters"
    one = ad.add(registry, "one", base=BASE, base_dir=model_dir, source=adapter_dir)
    assert 0 < one.task_id < 2**63
    assert one.target_modules == ("q_proj", "v_proj") and one.rank == 8
    manifest = json.loads((registry / "one" / ad.ADAPTER_MANIFEST).read_text())
    assert manifest["task_id"] == one.task_id
    assert set(manifest["sha256"]) == {
        "source/adapter_config.json",
        "source/adapter_model.safetensors",
        "model.lora_weights.npy",
        "model.lora_config.npy",
    }
    ad.verify(one)
    weights, config = ad.verified_tensors(one)
    assert weights.dtype == np.float16 and weights.shape[:2] == config.shape[:2]
    assert ad.task_id_of(weights, config) == one.task_id
    # Stable: the same adapter in another registry (another replica) gets the same id ...
    again = ad.add(tmp_path / "elsewhere", "one", base=BASE, base_dir=model_dir, source=adapter_dir)
    assert again.task_id == one.task_id
    # ... other weights another id; the name is never reused.
    two = ad.add(registry, "two", base=BASE, base_dir=model_dir, source=other_dir)
    assert two.task_id != one.task_id
    assert two.target_modules == ("o_proj", "up_proj")
    with pytest.raises(ad.AdapterError, match="name: adapter 'one' is already registered"):
        ad.add(registry, "one", base=BASE, base_dir=model_dir, source=other_dir)
    assert ad.load_registry(registry).keys() == {"one", "two"}
    assert ad.load_registry(tmp_path / "absent") == {}


def test_changed_bytes_are_refused(tmp_path: Path, model_dir: Path, adapter_dir: Path) -> None:
    registry = tmp_path / "adapters"
    ad.add(registry, "one", base=BASE, base_dir=model_dir, source=adapter_dir)
    path = registry / "one" / ad.LORA_WEIGHTS_FILE
    weights = np.load(path)
    weights[0, 0, 0] += 1
    np.save(path, weights)
    adapter = ad.load_registry(registry)["one"]
    with pytest.raises(ad.AdapterError, match=r"sha256: 'one' model\.lora_weights\.npy"):
        ad.verify(adapter)
    with pytest.raises(ad.AdapterError, match="sha256"):
        ad.verified_tensors(adapter)


def test_refused_adapter_leaves_nothing(tmp_path: Path, model_dir: Path, adapter_dir: Path) -> None:
    registry = tmp_path / "adapters"
    with pytest.raises(ad.AdapterError, match="r: 8"):
        ad.add(registry, "one", base=BASE, base_dir=model_dir, source=adapter_dir, max_rank=4)
    assert not (registry / "one").exists()
    with pytest.raises(ad.AdapterError, match="name"):
        ad.add(registry, "../x", base=BASE, base_dir=model_dir, source=adapter_dir)


def test_half_a_module_is_refused(tmp_path: Path, model_dir: Path, adapter_dir: Path) -> None:
    from safetensors.numpy import save_file

    source = tmp_path / "half"
    source.mkdir()
    (source / ad.CONFIG_FILE).write_bytes((adapter_dir / ad.CONFIG_FILE).read_bytes())
    state = load_file(str(adapter_dir / ad.WEIGHTS_FILE))
    del state["base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight"]
    save_file(state, str(source / ad.WEIGHTS_FILE))
    with pytest.raises(ad.AdapterError, match="layer 3 q_proj lacks lora_A/B"):
        ad.add(tmp_path / "adapters", "half", base=BASE, base_dir=model_dir, source=source)
    assert not (tmp_path / "adapters" / "half").exists()


def test_cli_add_and_list(
    tmp_path: Path, model_dir: Path, adapter_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rich.console import Console

    repo = tmp_path / "repo"
    (repo / BASE).mkdir(parents=True)
    # The base's HF folder is found through its config.pbtxt, as the CPU engine renders it.
    (repo / BASE / "config.pbtxt").write_text(
        f'parameters {{ key: "hf_model_dir" value: {{ string_value: "{model_dir}" }} }}\n'
    )
    console = Console(width=200)
    argv = ["adapter", "add", "tenant-a", "--base", BASE, "--path", str(adapter_dir)]
    assert main([*argv, "--repository", str(repo)], console) == 0
    assert main(["adapter", "list", "--repository", str(repo), "--verify"], console) == 0
    out = capsys.readouterr().out
    assert "tenant-a" in out and "ok" in out
    assert main([*argv, "--repository", str(repo)], console) == 2
    assert "already registered" in capsys.readouterr().out
    np.save(repo / "adapters" / "tenant-a" / ad.LORA_CONFIG_FILE, np.zeros((1, 1, 3), np.int32))
    assert main(["adapter", "list", "--repository", str(repo), "--verify"], console) == 2


def test_not_cached_message_is_the_executors() -> None:
    text = lc.not_cached_message(10)
    assert text == "LoRA task 10 not found in cache. Please send LoRA weights with request"
    assert lc.not_cached_task(f"in ensemble: {text}") == 10
    assert lc.not_cached_task("other error") is None
