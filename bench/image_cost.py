"""What one screenshot costs the façade's own code, in-process, on a quiet machine.

A micro-measure beside the end-to-end figures: the functions the façade runs per image, called
here on the scenario's screenshots, each timed by wall clock and by the calling thread's CPU
clock (`time.thread_time`: what the façade's worker thread spends, whatever else runs):

- `check_images` (generation/images.py: Pillow header checks, decode, resize to the model's
  budget, PNG re-encode), which the façade runs off its event loop per request;
- `build_text_infer_request` (engine/text_request.py: base64 of the resized image into the
  vLLM contract's request);
- the base64 decode of an OpenAI `data:` URL (the front door's share before check_images).

The gRPC/HTTP receive of the ~0.9 MB, TLS and protobuf/JSON parsing are not in it: the
end-to-end CPU per request (image_report.py) holds them.
"""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from autoglm.bench.image_workload import ImageRequest
from autoglm.server.engine.text_request import build_text_infer_request
from autoglm.server.generation.images import ImageInput, check_images
from autoglm.server.vision import VisionSpec


def _timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU milliseconds of `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpus.append((time.thread_time() - c) * 1e3)
        walls.append((time.perf_counter() - w) * 1e3)
    return walls, cpus


def _stats(walls: Sequence[float], cpus: Sequence[float]) -> dict[str, float]:
    return {
        "wall_ms_p50": statistics.median(walls),
        "cpu_ms_p50": statistics.median(cpus),
        "cpu_ms_min": min(cpus),
        "cpu_ms_max": max(cpus),
    }


def measure(
    requests: Sequence[ImageRequest], vision: VisionSpec, *, repeats: int = 5
) -> dict[str, Any]:
    """Median costs over every screenshot × `repeats` (after one untimed call each: Pillow's
    plugins and zlib load on the first)."""
    timings: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in ("check_images", "engine_request", "data_url_decode")
    }
    for req in requests:
        assert req.png is not None and req.checked is not None
        images = [ImageInput("messages[1].parts[0].image", req.png)]
        check_images(images, vision)
        calls = {
            "check_images": partial(check_images, images, vision),
            "engine_request": partial(
                build_text_infer_request, replace(req.engine, request_id="bench")
            ),
            "data_url_decode": partial(base64.b64decode, base64.b64encode(req.png)),
        }
        for name, call in calls.items():
            walls, cpus = _timed(call, repeats)
            timings[name][0].extend(walls)
            timings[name][1].extend(cpus)
    first = requests[0].checked
    assert first is not None
    n = len(requests)
    return {
        "screenshots": n,
        "repeats": repeats,
        "png_bytes_mean": sum(len(r.png or b"") for r in requests) / n,
        "base64_bytes_mean": sum(4 * -(-len(r.png or b"") // 3) for r in requests) / n,
        "resized_bytes_mean": sum(len(r.checked.data) for r in requests if r.checked) / n,
        "source_size": [first.source_width, first.source_height],
        "resized_size": [first.width, first.height],
        "image_tokens": first.tokens,
        **{name: _stats(*t) for name, t in timings.items()},
    }
