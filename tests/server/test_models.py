"""load_model: end/pad ids and limits from config.json, generation_config.json and the engine's
manifest, as the engine needs them (the rules themselves: test_model_limits.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from autoglm.server.model_limits import EngineLimits, ModelLimits
from autoglm.server.models import ModelRegistry, ModelSpec, ServedModel, load_model


def spec(folder: Path, name: str = "smollm2") -> ModelSpec:
    return ModelSpec(name=name, triton_model="smollm2_cpu", tokenizer_dir=folder)


def folder_with(
    model_dir: Path,
    dest: Path,
    config: dict[str, Any] | None,
    generation_config: dict[str, Any] | None = None,
) -> Path:
    """A model folder: the real tokenizer.json (symlinked) plus the given small json files."""
    dest.mkdir()
    (dest / "tokenizer.json").symlink_to(model_dir / "tokenizer.json")
    if config is not None:
        (dest / "config.json").write_text(json.dumps(config))
    if generation_config is not None:
        (dest / "generation_config.json").write_text(json.dumps(generation_config))
    return dest


def real_config(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The real config.json with ``overrides``; a value of None removes the key."""
    cfg = json.loads((model_dir / "config.json").read_text())
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def smollm2(model_dir: Path) -> ServedModel:
    return load_model(spec(model_dir))


def test_real_model_ids(smollm2: ServedModel, model_dir: Path) -> None:
    assert smollm2.end_id == 2
    assert smollm2.pad_id == 2
    assert smollm2.spec.tokenizer_dir == model_dir
    assert smollm2.encoder.has_chat_template
    assert smollm2.encoder.tokenizer.id_to_token(smollm2.end_id) == "<|im_end|>"


def test_pad_falls_back_to_eos(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, pad_token_id=None)
    served = load_model(spec(folder_with(model_dir, tmp_path / "m", cfg)))
    assert (served.end_id, served.pad_id) == (2, 2)


def test_null_pad_falls_back_to_eos(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=7)
    cfg["pad_token_id"] = None
    served = load_model(spec(folder_with(model_dir, tmp_path / "m", cfg)))
    assert (served.end_id, served.pad_id) == (7, 7)


def test_explicit_pad_is_kept(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=2, pad_token_id=0)
    served = load_model(spec(folder_with(model_dir, tmp_path / "m", cfg)))
    assert (served.end_id, served.pad_id) == (2, 0)


def test_list_valued_eos_keeps_every_id(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=[5, 2, 9], pad_token_id=None)
    served = load_model(spec(folder_with(model_dir, tmp_path / "m", cfg)))
    assert served.end_ids == (5, 2, 9)
    assert served.end_id == 5  # the engine's end_id
    assert served.stop_words == ((2,), (9,))  # the others, as single-token stop words
    assert served.pad_id == 5


def test_llama_31_ids_from_generation_config(model_dir: Path, tmp_path: Path) -> None:
    # Llama-3.1-Instruct: config.json says 128001 (<|end_of_text|>); generation_config.json
    # lists the turn ends too, and a chat answer ends with 128009 (<|eot_id|>).
    cfg = real_config(model_dir, eos_token_id=128001, pad_token_id=None)
    gen = {"eos_token_id": [128001, 128008, 128009]}
    served = load_model(spec(folder_with(model_dir, tmp_path / "m", cfg, gen)))
    assert served.end_ids == (128001, 128008, 128009)
    assert served.end_id == 128001
    assert served.stop_words == ((128008,), (128009,))
    assert served.end_at([5, 6, 128009]) == 2
    assert served.end_at([128008, 128001]) == 0
    assert served.end_at([5, 6]) is None


def test_generation_config_overrides_config(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=2, pad_token_id=2)
    folder = folder_with(model_dir, tmp_path / "m", cfg, {"eos_token_id": [11, 2]})
    served = load_model(spec(folder))
    assert (served.end_ids, served.pad_id) == ((11, 2), 2)


def test_eos_only_in_generation_config(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=None, pad_token_id=None)
    folder = folder_with(model_dir, tmp_path / "m", cfg, {"eos_token_id": 3})
    assert load_model(spec(folder)).end_id == 3


def test_missing_eos_is_a_value_error(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=None)
    folder = folder_with(model_dir, tmp_path / "m", cfg, {"bos_token_id": 1})
    with pytest.raises(ValueError, match="eos_token_id") as info:
        load_model(spec(folder))
    assert str(folder) in str(info.value)


def test_no_config_files_is_a_value_error(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eos_token_id"):
        load_model(spec(folder_with(model_dir, tmp_path / "m", None)))


@pytest.mark.parametrize("eos", ["2", 2.0, None])
def test_non_integer_eos_is_a_value_error(model_dir: Path, tmp_path: Path, eos: object) -> None:
    cfg = real_config(model_dir)
    cfg["eos_token_id"] = eos
    with pytest.raises(ValueError, match="eos_token_id"):
        load_model(spec(folder_with(model_dir, tmp_path / "m", cfg)))


def test_empty_eos_list_is_a_value_error(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=[])
    with pytest.raises(ValueError, match="eos_token_id"):
        load_model(spec(folder_with(model_dir, tmp_path / "m", cfg)))


def test_real_model_limits(smollm2: ServedModel) -> None:
    # SmolLM2-135M-Instruct: config.json max_position_embeddings 8192, nothing else stated.
    assert smollm2.limits == ModelLimits(
        max_context=8192, max_input=8192, max_output=4096, default_max_tokens=256
    )
    assert smollm2.stop_words == ()


def test_limits_from_the_engine_manifest(model_dir: Path) -> None:
    built = EngineLimits(max_input_len=1024, max_seq_len=2048, source="version 2 manifest")
    served = load_model(replace(spec(model_dir), engine_limits=built))
    assert served.limits == ModelLimits(2048, 1024, 2047, 256)


def test_limits_from_generation_config(model_dir: Path, tmp_path: Path) -> None:
    gen = {"eos_token_id": 2, "max_length": 4096, "max_new_tokens": 1000}
    folder = folder_with(model_dir, tmp_path / "m", real_config(model_dir), gen)
    assert load_model(spec(folder)).limits == ModelLimits(4096, 4096, 4095, 1000)


def test_an_override_above_the_model_is_refused_naming_the_model(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_context_tokens: 16384 is above 8192") as info:
        load_model(replace(spec(model_dir), max_context_tokens=16384))
    assert "smollm2" in str(info.value)
    assert str(model_dir) in str(info.value)


def test_overrides_lower_the_limits(model_dir: Path) -> None:
    lowered = replace(spec(model_dir), max_context_tokens=2048, max_output_tokens=512)
    assert load_model(lowered).limits == ModelLimits(2048, 2048, 512, 256)


def test_registry(smollm2: ServedModel) -> None:
    other = ServedModel(spec=spec(smollm2.spec.tokenizer_dir, "a-model"), **_ids(smollm2))
    registry = ModelRegistry([smollm2, other])
    assert registry.names() == ["a-model", "smollm2"]
    assert registry.get("smollm2") is smollm2
    assert registry.get("missing") is None
    assert {m.spec.name for m in registry} == {"smollm2", "a-model"}


def _ids(model: ServedModel) -> dict[str, Any]:
    return {
        "encoder": model.encoder,
        "end_ids": model.end_ids,
        "pad_id": model.pad_id,
        "limits": model.limits,
    }
