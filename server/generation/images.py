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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from autoglm.server.errors import InvalidArgument
from autoglm.server.vision import Glm4vResize, ImageLimits, VisionSpec

__all__ = [
    "CheckedImage",
    "Glm4vResize",
    "ImageInput",
    "ImageLimits",
    "check_image",
    "check_images",
]

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
PNG_COMPRESS_LEVEL = 1  # of a resized image sent to the engine (check_image says why)


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image as a request carries it, with the request field that names it in errors."""

    field: str  # "messages[1].parts[0].image" (the OpenAI front door names it content[0])
    data: bytes


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
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise refuse(
            f"declares more pixels than the limit of {limits.max_source_pixels}"
            " (decompression bomb?)"
        ) from None
    except UnidentifiedImageError:
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
    # zlib level 1, not Pillow's default 6: the bytes only cross the link to Triton, and the
    # encode was most of the façade's CPU per image (1080×2400 screenshot resized to 448×1036:
    # 144 ms at level 6, 47 ms at level 1 for 13 % more bytes; at the real 5 M-pixel budget
    # 276 → 120 ms; measured in-process on the 2-core development VM).
    resized.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return CheckedImage(out.getvalue(), "image/png", new_w, new_h, width, height, tokens)


def check_images(images: Sequence[ImageInput], vision: VisionSpec) -> tuple[CheckedImage, ...]:
    """Check every image of a request against the model's rules (count first: nothing is
    decoded for a request over the limit)."""
    limit = vision.limits.max_images
    if len(images) > limit:
        raise InvalidArgument(
            [(images[limit].field, f"{len(images)} images exceed the limit of {limit} per request")]
        )
    return tuple(
        check_image(i.data, i.field, limits=vision.limits, resize=vision.resize) for i in images
    )
