"""load_model: end/pad ids from config.json and generation_config.json, as the engine needs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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


def test_list_valued_eos_takes_the_first(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=[5, 2, 9], pad_token_id=None)
    served = load_model(spec(folder_with(model_dir, tmp_path / "m", cfg)))
    assert served.end_id == 5
    assert served.pad_id == 5


def test_generation_config_overrides_config(model_dir: Path, tmp_path: Path) -> None:
    cfg = real_config(model_dir, eos_token_id=2, pad_token_id=2)
    folder = folder_with(model_dir, tmp_path / "m", cfg, {"eos_token_id": [11, 2]})
    served = load_model(spec(folder))
    assert (served.end_id, served.pad_id) == (11, 2)


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


def test_registry(smollm2: ServedModel) -> None:
    other = ServedModel(spec=spec(smollm2.spec.tokenizer_dir, "a-model"), **_ids(smollm2))
    registry = ModelRegistry([smollm2, other])
    assert registry.names() == ["a-model", "smollm2"]
    assert registry.get("smollm2") is smollm2
    assert registry.get("missing") is None
    assert {m.spec.name for m in registry} == {"smollm2", "a-model"}


def _ids(model: ServedModel) -> dict[str, Any]:
    return {"encoder": model.encoder, "end_id": model.end_id, "pad_id": model.pad_id}
