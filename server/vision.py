"""What a model does with images: whether it takes them, its placeholder, its resize rule, limits.

Read from the model's HF folder (`config.json`, `preprocessor_config.json`) when the model is
loaded; pure dataclasses otherwise, used by generation/images.py (the checks) and
tokenization.py (the placeholders). Only GLM-4.1V's family is known today: its placeholder is
vLLM's for the architecture (`vllm/model_executor/models/glm4_1v.py`, `get_placeholder_str`),
one `<|begin_of_image|><|image|><|end_of_image|>` per image, whose `<|image|>` the engine
expands to the image's tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# model_type (config.json) -> the prompt placeholder of one image, and its expanded token.
_PLACEHOLDERS = {
    "glm4v": ("<|begin_of_image|><|image|><|end_of_image|>", "<|image|>"),
    "glm4v_moe": ("<|begin_of_image|><|image|><|end_of_image|>", "<|image|>"),
}


# The largest `max_image_bytes` an operator may set (settings.py): one image's compressed file.
MAX_IMAGE_BYTES_SETTING = 64 << 20


class VisionConfigError(ValueError):
    """A vision-language model folder whose image settings cannot be read."""


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_images: int = 10  # per request (the model authors' --limit-mm-per-prompt)
    max_bytes: int = 20 << 20  # one image's compressed size
    # What a header may declare before anything is decoded: a 1080×2400 screenshot is 2.6 M
    # pixels; 50 M allows 8K photos and refuses the canvases decompression bombs declare.
    max_source_pixels: int = 50_000_000


@dataclass(frozen=True, slots=True)
class Glm4vResize:
    """GLM-4.1V's resize rule (transformers `smart_resize`), with the processor's defaults."""

    max_pixels: int = 5_000_000  # the model authors' mm-processor-kwargs
    min_pixels: int = 112 * 112
    factor: int = 28  # patch_size 14 × merge_size 2
    temporal: int = 2  # temporal_patch_size: the processor passes it as num_frames
    max_aspect: float = 200.0

    def size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing; ValueError for an aspect ratio the model refuses."""
        factor = self.factor
        if height < factor or width < factor:
            scale = max(factor / height, factor / width)
            height, width = int(height * scale), int(width * scale)
        if max(height, width) / min(height, width) > self.max_aspect:
            raise ValueError(
                f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is over"
                f" {self.max_aspect:.0f}:1"
            )
        h_bar = round(height / factor) * factor
        w_bar = round(width / factor) * factor
        frames = self.temporal  # num_frames == temporal_factor, so t_bar == num_frames
        if frames * h_bar * w_bar > self.max_pixels:
            beta = math.sqrt(frames * height * width / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif frames * h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (frames * height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def tokens(self, height: int, width: int) -> int:
        """Image tokens of a resized image: one per merge of patches (2×2 of 14 pixels)."""
        return (height // self.factor) * (width // self.factor)


@dataclass(frozen=True, slots=True)
class VisionSpec:
    """A vision-language model's image rules (None on a text-only ServedModel)."""

    placeholder: str  # one image's placeholder in the prompt
    image_token: str  # the token the engine expands (inside the placeholder)
    image_token_id: int
    resize: Glm4vResize
    limits: ImageLimits


def load_vision(
    model_dir: Path, *, limits: ImageLimits, max_pixels: int | None = None
) -> VisionSpec | None:
    """The image rules of an HF folder, or None for a text-only model.

    `max_pixels` overrides the processor's own budget the way vLLM's `--mm-processor-kwargs
    '{"max_pixels": N}'` does (the model authors serve AutoGLM-Phone-9B with 5,000,000): the
    façade must resize to the budget the engine uses, so both take the same value.
    """
    if max_pixels is not None and max_pixels < 1:
        raise VisionConfigError(f"image max_pixels: must be >= 1, got {max_pixels}")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    known = _PLACEHOLDERS.get(str(config.get("model_type", "")))
    if known is None:
        return None
    placeholder, image_token = known
    image_token_id = config.get("image_token_id")
    if not isinstance(image_token_id, int):
        raise VisionConfigError(f"{config_path}: no integer image_token_id")
    proc_path = model_dir / "preprocessor_config.json"
    if not proc_path.is_file():
        raise VisionConfigError(f"{proc_path}: missing (the image processor's settings)")
    proc = json.loads(proc_path.read_text())
    size = proc.get("size") or {}
    try:
        factor = int(proc["patch_size"]) * int(proc["merge_size"])
        resize = Glm4vResize(
            max_pixels=int(max_pixels or size.get("longest_edge") or proc["max_pixels"]),
            min_pixels=int(size.get("shortest_edge") or proc.get("min_pixels") or 112 * 112),
            factor=factor,
            temporal=int(proc.get("temporal_patch_size", 2)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VisionConfigError(f"{proc_path}: unreadable image settings ({exc})") from None
    return VisionSpec(placeholder, image_token, image_token_id, resize, limits)
