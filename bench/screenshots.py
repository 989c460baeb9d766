"""Phone screenshots for the image scenario, drawn in-process from a seed (no files, no I/O).

The Open-AutoGLM agent sends a full-size screenshot with every step: a 1080×2400 PNG of about
1.2 MB as base64 (issue #22), that is about 0.9 MB of PNG. Flat coloured panels alone compress
to a few tens of kilobytes, which would understate what the façade decodes, resizes and
re-encodes; so each screenshot has what a real one has: a status and an app bar, a photo (a
smooth pattern with sensor-like noise: the part PNG cannot compress), list rows with
anti-aliased text and round icons, a navigation bar. Its size is fixed by the layout (one photo
of `PHOTO_HEIGHT` rows); the seed changes colours, text and the photo's pattern.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = (1080, 2400)  # width, height: the agent's screenshots
PHOTO_HEIGHT = 500  # rows of the noisy photo: the PNG's size (~0.85-0.95 MB, measured)
NOISE_SIGMA = 4.0  # the photo's grain, in 8-bit levels
_WORDS = (
    *("Settings", "Wi-Fi", "Bluetooth", "Display", "Battery", "Sound", "Storage", "Apps"),
    *("Location", "Security", "Accounts", "Messages", "Camera", "Photos", "Calendar", "Clock"),
    *("Maps", "Music", "Weather", "Notes", "Search", "Connected", "devices", "Notifications"),
    *("Privacy", "Updates", "Network", "Mobile", "data", "Hotspot", "Airplane", "mode", "Do"),
)


def _colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(low, high, 3))
    return r, g, b


def _photo(rng: np.random.Generator, r: random.Random, width: int, height: int) -> Image.Image:
    """A smooth two-frequency pattern plus Gaussian grain (incompressible, like a photo)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.integers(0, 256, 3).astype(np.float32)
    fx, fy = r.uniform(40, 200), r.uniform(40, 200)
    channels = [base[c] + 80 * np.sin(xx / fx + c) * np.cos(yy / fy) for c in range(3)]
    pixels = np.stack(channels, -1) + rng.normal(0, NOISE_SIGMA, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def screenshot(seed: int, size: tuple[int, int] = SIZE) -> bytes:
    """A PNG that looks like a settings-style app screen; the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    r = random.Random(seed)
    width, height = size
    image = Image.new("RGB", size, _colour(rng, 235, 256))
    draw = ImageDraw.Draw(image)
    title, body, small = (ImageFont.load_default(s) for s in (56, 34, 26))
    accent = _colour(rng, 20, 200)
    draw.rectangle((0, 0, width, 250), fill=accent)  # status bar and app bar
    draw.text((40, 25), f"{r.randrange(24):02d}:{r.randrange(60):02d}", font=small, fill="white")
    draw.text((40, 140), " ".join(r.sample(_WORDS, 2)), font=title, fill="white")
    y = 280
    image.paste(_photo(rng, r, width - 80, PHOTO_HEIGHT), (40, y))
    y += PHOTO_HEIGHT + 30
    while y < height - 280:  # list rows: an icon, a title, a grey subtitle, a divider
        draw.ellipse((40, y, 140, y + 100), fill=_colour(rng, 0, 256))
        line = " ".join(r.choices(_WORDS, k=r.randrange(1, 5)))
        draw.text((170, y + 5), line, font=body, fill=(30, 30, 30))
        line = " ".join(r.choices(_WORDS, k=r.randrange(3, 8)))
        draw.text((170, y + 55), line, font=small, fill=(110, 110, 110))
        draw.line((40, y + 125, width - 40, y + 125), fill=(220, 220, 220), width=2)
        y += 150
    draw.rectangle((0, height - 130, width, height), fill=(250, 250, 250))  # navigation bar
    for i in (1, 2, 3):
        x = width * i // 4
        draw.ellipse((x - 30, height - 95, x + 30, height - 35), outline=(90, 90, 90), width=5)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def screenshots(count: int, seed: int = 0) -> Sequence[bytes]:
    """`count` different screenshots (seeds seed, seed+1, …)."""
    return [screenshot(seed + i) for i in range(count)]
