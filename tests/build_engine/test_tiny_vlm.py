"""The tiny random-weight GLM-4.1V checkpoint: files, ids, template, image geometry, atomicity.

One checkpoint per session, generated in a temp dir from the prepared SmolLM2 tokenizer (~5 s).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer

from autoglm.build_engine import glm41v
from autoglm.build_engine.default_model import ModelPrepError
from autoglm.build_engine.tiny_vlm import (
    MARKER,
    MAX_PIXELS,
    TINY_VLM_NAME,
    ensure_tiny_vlm,
    is_prepared,
    prepare_tiny_vlm,
)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("tiny-vlm") / TINY_VLM_NAME
    return prepare_tiny_vlm(out, base_tokenizer_dir=model_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny / "tokenizer.json"))


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_folder_has_every_file_and_no_leftovers(tiny: Path) -> None:
    names = {p.name for p in tiny.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "README.md",
        MARKER,
    } <= names
    assert is_prepared(tiny)
    assert not [p for p in tiny.parent.iterdir() if p.name.startswith(".prepare-")]
    assert "random" in (tiny / "README.md").read_text().lower()


def test_special_tokens_are_single_ids_and_the_config_uses_them(
    tiny: Path, tokenizer: Tokenizer
) -> None:
    config = _json(tiny / "config.json")
    ids = {t: tokenizer.token_to_id(t) for t in glm41v.SPECIAL_TOKENS}
    assert None not in ids.values()
    assert config["image_token_id"] == ids["<|image|>"]
    assert config["image_start_token_id"] == ids["<|begin_of_image|>"]
    assert config["image_end_token_id"] == ids["<|end_of_image|>"]
    assert config["video_token_id"] == ids["<|video|>"]
    assert config["text_config"]["vocab_size"] == tokenizer.get_vocab_size()
    # Each special token stays one id whatever text surrounds it (matched before the BPE).
    text = "a<|begin_of_image|><|image|><|end_of_image|>b[gMASK]<sop><|user|>\nhi</answer>"
    pieces = tokenizer.encode(text, add_special_tokens=False).tokens
    for token in ("<|begin_of_image|>", "<|image|>", "<|end_of_image|>", "[gMASK]", "</answer>"):
        assert token in pieces
    # They are special: a decode that skips special tokens drops them.
    ids_ = tokenizer.encode("<think>x</think>", add_special_tokens=False).ids
    assert tokenizer.decode(ids_, skip_special_tokens=True) == "x"


def test_generation_config_lists_several_end_ids(tiny: Path, tokenizer: Tokenizer) -> None:
    expected = [tokenizer.token_to_id(t) for t in glm41v.END_TOKENS]
    assert len(expected) >= 2
    assert _json(tiny / "generation_config.json")["eos_token_id"] == expected
    assert _json(tiny / "config.json")["eos_token_id"] == expected
    tokenizer_config = _json(tiny / "tokenizer_config.json")
    assert tokenizer.token_to_id(tokenizer_config["eos_token"]) == expected[0]
    assert tokenizer_config["pad_token"] == glm41v.PAD_TOKEN


def test_chat_template_is_glm41v_and_renders_images_and_string_content(tiny: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    assert (tiny / "chat_template.jinja").read_text() == glm41v.CHAT_TEMPLATE
    assert _json(tiny / "tokenizer_config.json")["chat_template"] == glm41v.CHAT_TEMPLATE
    tok = PreTrainedTokenizerFast.from_pretrained(tiny)
    messages = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Open it"}]},
        {"role": "assistant", "content": "<answer>do()</answer>"},
        # vLLM's --chat-template-content-format string: placeholders already in the text.
        {"role": "user", "content": f"{glm41v.IMAGE_PLACEHOLDER}\nNext"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "[gMASK]<sop><|system|>\nYou are an agent."
        f"<|user|>\n{glm41v.IMAGE_PLACEHOLDER}Open it"
        "<|assistant|>\n<answer>do()</answer>"
        f"<|user|>\n{glm41v.IMAGE_PLACEHOLDER}\nNext<|assistant|>\n"
    )


def test_preprocessor_keeps_the_real_geometry_with_the_tiny_budget(tiny: Path) -> None:
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    pre = _json(tiny / "preprocessor_config.json")
    assert (pre["patch_size"], pre["temporal_patch_size"], pre["merge_size"]) == (14, 2, 2)
    assert pre["size"] == {"shortest_edge": glm41v.MIN_PIXELS, "longest_edge": MAX_PIXELS}
    config = _json(tiny / "config.json")["vision_config"]
    assert (config["patch_size"], config["temporal_patch_size"]) == (14, 2)
    assert config["spatial_merge_size"] == 2
    processor = Glm4vImageProcessorPil.from_pretrained(tiny)
    screenshot = Image.new("RGB", (1080, 2400))
    grid = processor(images=[screenshot], return_tensors="pt")["image_grid_thw"][0].tolist()
    # smart_resize with max_pixels 1,000,000 (compared with 2·h·w): 1036×448 → 74×32 patches.
    assert grid == [1, 74, 32]
    assert 74 * 32 // 4 == 592


def test_weights_are_random_but_reproducible_and_small(
    tiny: Path, tmp_path: Path, model_dir: Path
) -> None:
    again = prepare_tiny_vlm(tmp_path / TINY_VLM_NAME, base_tokenizer_dir=model_dir)

    def digest(folder: Path) -> str:
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    assert digest(again) == digest(tiny)
    marker = _json(tiny / MARKER)
    assert "random" in marker["weights"]
    assert marker["parameters"] < 10_000_000


def test_one_image_forward_works(tiny: Path, tokenizer: Tokenizer) -> None:
    from transformers import Glm4vForConditionalGeneration
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    model = Glm4vForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()
    png = io.BytesIO()
    Image.new("RGB", (280, 560), (10, 200, 90)).save(png, format="PNG")
    features = Glm4vImageProcessorPil.from_pretrained(tiny)(
        images=[Image.open(png).convert("RGB")], return_tensors="pt"
    )
    count = int(features["image_grid_thw"].prod()) // 4
    text = f"<|begin_of_image|>{'<|image|>' * count}<|end_of_image|>hello"
    input_ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False).ids])
    with torch.inference_mode():
        out = model(
            input_ids=input_ids,
            pixel_values=features["pixel_values"],
            image_grid_thw=features["image_grid_thw"],
            mm_token_type_ids=(input_ids == model.config.image_token_id).int(),
        )
    assert out.logits.shape == (1, input_ids.shape[1], tokenizer.get_vocab_size())
    assert torch.isfinite(out.logits).all()


def test_prepare_is_a_no_op_once_done(tiny: Path) -> None:
    before = (tiny / "model.safetensors").stat().st_mtime_ns
    assert prepare_tiny_vlm(tiny, base_tokenizer_dir=tiny / "missing") == tiny
    assert (tiny / "model.safetensors").stat().st_mtime_ns == before


def test_a_missing_base_tokenizer_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    out = tmp_path / "models" / TINY_VLM_NAME
    with pytest.raises(ModelPrepError, match=r"tokenizer\.json"):
        prepare_tiny_vlm(out, base_tokenizer_dir=tmp_path / "nowhere")
    assert not out.exists()


def test_ensure_needs_smollm2_prepared_first(tmp_path: Path) -> None:
    from rich.console import Console

    with pytest.raises(ModelPrepError, match="SmolLM2"):
        ensure_tiny_vlm(tmp_path, Console(file=io.StringIO()))
