"""Images in a request: verified with Pillow, resized to the model's pixel budget, re-compressed.

Pure (no I/O): bytes in, a `CheckedImage` (compressed bytes for the engine, never raw pixels)
out, or InvalidArgument naming the request field. The image issue (#22) wires this into both
front doors and the vLLM engine contract; the checks stand on their own:

- The type is sniffed from the bytes by Pillow, never taken from a claimed MIME type. Only
  PNG, JPEG and WebP are accepted.
- Limits on bytes and on the pixels the header declares, checked before any pixel is decoded:
  a decompression bomb (a small file declaring a huge canvas) is refused from its header.
- Resizing follows the model's own rule. For GLM-4.1V that is transformers' `smart_resize`
  (`models/glm4v/image_processing_glm4v.py`, called with `num_frames = temporal_patch_size`):
  sides become multiples of 28, the aspect ratio is kept, and the pixels stay within the budget
  (the model authors serve AutoGLM-Phone-9B with `max_pixels` 5,000,000). The engine's
  processor would do the same; doing it here bounds what crosses the wire, and the count of
  image tokens is known before admission.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from autoglm.server.errors import InvalidArgument

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


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
        """Image tokens of a resized image: one per 2×2 merge of 14-pixel patches."""
        return (height // self.factor) * (width // self.factor)


@dataclass(frozen=True, slots=True)
class CheckedImage:
    data: bytes  # compressed (the original bytes when no resize was needed)
    mime: str  # sniffed from the bytes
    width: int
    height: int
    source_width: int
    source_height: int
    tokens: int  # as the model's processor will count them


def check_image(
    data: bytes, field: str, *, limits: ImageLimits, resize: Glm4vResize
) -> CheckedImage:
    """Verify, resize and re-compress one image, or InvalidArgument naming `field`."""

    def refuse(why: str) -> InvalidArgument:
        return InvalidArgument([(field, why)])

    if not data:
        raise refuse("empty image")
    if len(data) > limits.max_bytes:
        raise refuse(f"{len(data)} bytes exceed the limit of {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own pixel limit and raises at twice it; ours is lower.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise refuse("not an image this server reads (PNG, JPEG or WebP)") from None
    with image:
        kind = image.format or ""
        if kind not in FORMATS:
            raise refuse(f"{kind or 'unknown'} images are not accepted (PNG, JPEG or WebP)")
        width, height = image.size
        if width < 1 or height < 1:
            raise refuse(f"{width}x{height} has no pixels")
        if width * height > limits.max_source_pixels:
            raise refuse(
                f"{width}x{height} = {width * height} pixels exceed the limit of"
                f" {limits.max_source_pixels} (decompression bomb?)"
            )
        try:
            new_h, new_w = resize.size(height, width)
        except ValueError as exc:
            raise refuse(str(exc)) from None
        try:
            image.load()  # decodes: a truncated or corrupt file fails here
        except (OSError, ValueError, SyntaxError) as exc:
            raise refuse(f"corrupt {kind} data ({exc})") from None
        tokens = resize.tokens(new_h, new_w)
        if (new_w, new_h) == (width, height):
            return CheckedImage(data, FORMATS[kind], width, height, width, height, tokens)
        # BICUBIC, as the model's processor resamples; PNG keeps the resize lossless.
        resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    resized.save(out, format="PNG", optimize=False)
    return CheckedImage(out.getvalue(), "image/png", new_w, new_h, width, height, tokens)
