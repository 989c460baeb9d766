"""vision.load_vision reads a model folder's image rules (config.json, preprocessor_config.json);
models.load_model puts them on the ServedModel and refuses a vision-language model on an engine
that takes token ids. The folder is the tiny GLM-4.1V (`vlm_dir`, GLM's real processor settings
with a 1,000,000-pixel budget) or a copy with one file changed; the token counts are checked
against transformers' own GLM-4.1V processor (the PIL variant: the same rule, no torchvision)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tokenizers import Tokenizer
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

from autoglm.server.models import TEXT_ENGINES, ModelSpec, load_model
from autoglm.server.vision import (
    Glm4vResize,
    ImageLimits,
    VisionConfigError,
    VisionSpec,
    load_vision,
)

PLACEHOLDER = "<|begin_of_image|><|image|><|end_of_image|>"
_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")
_FILES += ("chat_template.jinja", "generation_config.json")


def variant(
    source: Path,
    dst: Path,
    *,
    config: dict[str, Any] | None = None,
    processor: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A copy of the tiny GLM-4.1V folder's small files (no weights) with config.json keys
    updated (a None value removes the key), preprocessor_config.json replaced, files dropped."""
    for name in _FILES:
        if name not in drop:
            shutil.copy(source / name, dst / name)
    if config is not None:
        data = json.loads((dst / "config.json").read_text())
        data.update(config)
        data = {k: v for k, v in data.items() if v is not None}
        (dst / "config.json").write_text(json.dumps(data))
    if processor is not None:
        (dst / "preprocessor_config.json").write_text(json.dumps(processor))
    return dst


def image_token_id(folder: Path) -> int:
    return Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id("<|image|>")


def processor_settings(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "preprocessor_config.json").read_text())


def vision(folder: Path, **kw: object) -> VisionSpec:
    spec = load_vision(folder, limits=ImageLimits(), **kw)  # type: ignore[arg-type]
    assert spec is not None
    return spec


def test_a_glm4v_folder_gives_its_placeholder_token_and_budget(vlm_dir: Path) -> None:
    limits = ImageLimits(max_images=3, max_bytes=1000)
    spec = load_vision(vlm_dir, limits=limits)
    assert spec == VisionSpec(
        placeholder=PLACEHOLDER,
        image_token="<|image|>",
        image_token_id=image_token_id(vlm_dir),
        # The processor's own budget: size.longest_edge / shortest_edge, patch 14 × merge 2.
        resize=Glm4vResize(max_pixels=1_000_000, min_pixels=12_544, factor=28, temporal=2),
        limits=limits,
    )


def test_max_pixels_overrides_the_processors_budget(vlm_dir: Path) -> None:
    # As vLLM's --mm-processor-kwargs '{"max_pixels": 5000000}' (the model authors' flag).
    assert vision(vlm_dir, max_pixels=5_000_000).resize.max_pixels == 5_000_000


def test_the_moe_variant_is_the_same_family(vlm_dir: Path, tmp_path: Path) -> None:
    folder = variant(vlm_dir, tmp_path, config={"model_type": "glm4v_moe"})
    assert vision(folder).placeholder == PLACEHOLDER


def test_the_older_processor_keys_are_read(vlm_dir: Path, tmp_path: Path) -> None:
    # Processors saved before `size` held the budget stated max_pixels / min_pixels.
    older = {"patch_size": 14, "merge_size": 2, "max_pixels": 2_000_000, "min_pixels": 3136}
    folder = variant(vlm_dir, tmp_path, processor=older)
    assert vision(folder).resize == Glm4vResize(max_pixels=2_000_000, min_pixels=3136)


@pytest.mark.parametrize(("height", "width"), [(2400, 1080), (480, 640), (50, 50), (28, 5000)])
@pytest.mark.parametrize("max_pixels", [None, 5_000_000, 200_000])
def test_token_counts_are_the_processors(
    vlm_dir: Path, height: int, width: int, max_pixels: int | None
) -> None:
    spec = vision(vlm_dir, max_pixels=max_pixels)
    size = dict(processor_settings(vlm_dir)["size"])
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    processor = Glm4vImageProcessorPil(size=size)
    grid = processor(images=[Image.new("RGB", (width, height))], return_tensors="np")
    (t, h, w), merge = grid["image_grid_thw"][0], processor.merge_size
    h_bar, w_bar = spec.resize.size(height, width)
    assert spec.resize.tokens(h_bar, w_bar) == t * h * w // merge**2


def test_a_text_only_folder_has_no_vision(model_dir: Path, tmp_path: Path) -> None:
    assert load_vision(model_dir, limits=ImageLimits()) is None  # SmolLM2: model_type llama
    assert load_vision(tmp_path, limits=ImageLimits()) is None  # no config.json at all


def test_a_missing_preprocessor_config_is_refused(vlm_dir: Path, tmp_path: Path) -> None:
    folder = variant(vlm_dir, tmp_path, drop=("preprocessor_config.json",))
    with pytest.raises(VisionConfigError, match=r"preprocessor_config\.json"):
        load_vision(folder, limits=ImageLimits())


@pytest.mark.parametrize("value", [None, "151343", 1.5])
def test_a_missing_or_bad_image_token_id_is_refused(
    vlm_dir: Path, tmp_path: Path, value: object
) -> None:
    folder = variant(vlm_dir, tmp_path, config={"image_token_id": value})
    with pytest.raises(VisionConfigError, match="image_token_id"):
        load_vision(folder, limits=ImageLimits())


@pytest.mark.parametrize(
    "processor",
    [
        {"merge_size": 2, "size": {"longest_edge": 1000}},  # no patch_size
        {"patch_size": 14, "merge_size": 2, "size": {}},  # no budget at all
        {"patch_size": "fourteen", "merge_size": 2, "size": {"longest_edge": 1000}},
    ],
)
def test_unreadable_image_settings_are_refused(
    vlm_dir: Path, tmp_path: Path, processor: dict[str, Any]
) -> None:
    folder = variant(vlm_dir, tmp_path, processor=processor)
    with pytest.raises(VisionConfigError, match="unreadable image settings"):
        load_vision(folder, limits=ImageLimits())


# ---- load_model --------------------------------------------------------------------------------


def spec(folder: Path, **kw: object) -> ModelSpec:
    return ModelSpec(name="vl", triton_model="vl", tokenizer_dir=folder, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", sorted(TEXT_ENGINES))
def test_a_vl_model_on_a_text_engine(vlm_dir: Path, engine: str) -> None:
    limits = ImageLimits(max_images=2)
    model = load_model(spec(vlm_dir, engine=engine, image_limits=limits, image_max_pixels=200_000))
    assert model.returns_text
    assert model.vision is not None
    assert (model.vision.limits, model.vision.resize.max_pixels) == (limits, 200_000)
    assert model.encoder.image_placeholder == PLACEHOLDER


@pytest.mark.parametrize("engine", ["cpu_reference", "tensorrt_llm"])
def test_a_vl_model_on_an_ids_engine_is_refused(vlm_dir: Path, engine: str) -> None:
    with pytest.raises(ValueError, match="needs a text engine") as info:
        load_model(spec(vlm_dir, engine=engine))
    assert "vl" in str(info.value) and engine in str(info.value)


def test_an_unknown_engine_is_refused(vlm_dir: Path, model_dir: Path) -> None:
    for folder in (vlm_dir, model_dir):
        with pytest.raises(ValueError, match="unknown engine 'sglang'"):
            load_model(spec(folder, engine="sglang"))


def test_a_text_only_model_on_a_text_engine_has_no_vision(model_dir: Path) -> None:
    model = load_model(spec(model_dir, engine="cpu_reference_vl"))
    assert model.returns_text and model.vision is None
    assert model.encoder.image_placeholder == ""


def test_an_ids_engine_does_not_return_text(model_dir: Path) -> None:
    assert not load_model(spec(model_dir)).returns_text


def test_a_broken_vl_folder_fails_at_load(vlm_dir: Path, tmp_path: Path) -> None:
    folder = variant(vlm_dir, tmp_path, drop=("preprocessor_config.json",))
    with pytest.raises(VisionConfigError):
        load_model(spec(folder, engine="vllm"))
    assert json.loads((folder / "config.json").read_text())["model_type"] == "glm4v"


@pytest.mark.parametrize("max_pixels", [-5, 0])
def test_a_non_positive_pixel_budget_is_refused_at_load(vlm_dir: Path, max_pixels: int) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        load_model(spec(vlm_dir, engine="vllm", image_max_pixels=max_pixels))
