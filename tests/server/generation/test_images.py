"""images.check_image: Pillow verifies, GLM-4.1V's rule resizes, compressed bytes come out.
The resize rule is checked against transformers' own `smart_resize` (the pinned release)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

# The PIL variant of the processor module: the same function, without torchvision.
from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize

from autoglm.server.errors import InvalidArgument
from autoglm.server.generation.images import Glm4vResize, ImageLimits, check_image

FIELD = "messages[1].content[0]"
LIMITS = ImageLimits()
RULE = Glm4vResize()


def encoded(width: int, height: int, fmt: str = "PNG", color: str = "#3a7") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


def refusal(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(InvalidArgument) as info:
        check_image(data, FIELD, limits=limits, resize=RULE)
    ((field, why),) = info.value.violations
    assert field == FIELD
    return why


@pytest.mark.parametrize(
    ("height", "width"),
    [(2400, 1080), (1080, 2400), (28, 28), (10, 10), (27, 5000), (640, 480), (4000, 3000),
     (112, 112), (50, 50), (1, 100), (3001, 2999), (8000, 60), (224, 224)],
)  # fmt: skip
@pytest.mark.parametrize("max_pixels", [5_000_000, 28 * 28 * 15000, 200_000])
def test_the_resize_rule_is_transformers(height: int, width: int, max_pixels: int) -> None:
    rule = Glm4vResize(max_pixels=max_pixels)
    expected = smart_resize(
        num_frames=2, height=height, width=width, temporal_factor=2, factor=28,
        min_pixels=112 * 112, max_pixels=max_pixels,
    )  # fmt: skip
    assert rule.size(height, width) == expected


def test_the_extreme_aspect_ratio_is_refused_like_transformers() -> None:
    with pytest.raises(ValueError):
        smart_resize(num_frames=2, height=28, width=28 * 201, temporal_factor=2, factor=28)
    assert "aspect ratio" in refusal(encoded(28 * 201, 28))


def test_a_phone_screenshot_is_about_3100_tokens() -> None:
    # The figure: a 1080x2400 screenshot at a 5,000,000-pixel budget.
    image = check_image(encoded(1080, 2400), FIELD, limits=LIMITS, resize=RULE)
    assert (image.width, image.height) == (1036, 2352)
    assert image.tokens == 3108
    assert (image.source_width, image.source_height) == (1080, 2400)
    assert image.mime == "image/png"
    with Image.open(io.BytesIO(image.data)) as back:  # compressed bytes, not pixels
        assert back.format == "PNG" and back.size == (1036, 2352)
    assert len(image.data) < 1036 * 2352  # a flat image compresses far below raw RGB


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_the_type_is_sniffed_and_a_fitting_image_passes_unchanged(fmt: str, mime: str) -> None:
    data = encoded(280, 140, fmt)
    image = check_image(data, FIELD, limits=LIMITS, resize=RULE)
    assert (image.mime, image.width, image.height, image.tokens) == (mime, 280, 140, 50)
    assert image.data == data  # already on the grid: the caller's bytes go on as they are


def test_what_is_not_an_accepted_image() -> None:
    assert refusal(b"") == "empty image"
    assert "PNG, JPEG or WebP" in refusal(b"GIF89a not really")
    assert "PNG, JPEG or WebP" in refusal(b"%PDF-1.7 ...")
    assert "GIF images are not accepted" in refusal(encoded(30, 30, "GIF"))
    assert "bytes exceed" in refusal(encoded(300, 300), ImageLimits(max_bytes=100))


def test_a_truncated_image_is_corrupt() -> None:
    data = encoded(500, 500, "JPEG", color="#123456")
    assert "corrupt JPEG" in refusal(data[: len(data) // 2])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    # 40 bytes that declare a 30000x30000 canvas (900 M pixels): refused before decoding.
    ihdr = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0"))
    why = refusal(bomb + _chunk(b"IEND", b""))
    assert "PNG, JPEG or WebP" in why or "decompression bomb" in why
    # Under Pillow's own limit but over ours: our message, from the header alone.
    ihdr = struct.pack(">IIBBBBB", 8_000, 8_000, 8, 2, 0, 0, 0)
    big = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0"))
    assert "decompression bomb" in refusal(big + _chunk(b"IEND", b""))
