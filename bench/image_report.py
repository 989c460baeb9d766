"""The image scenario's figures (pure: no I/O): façade vs direct per level, and what the façade
spends on image handling per request, three ways.

1. End to end, from /proc: the façade process's CPU seconds in a window ÷ the requests started
   in it, on the image paths and on the text twin (the same turns without the screenshot);
   the difference is what the image costs the façade per request, all of it (receiving ~0.9 MB
   over TLS, protobuf or JSON + base64, Pillow, base64 to Triton), plus any difference in
   output length (tokens per request are printed beside it).
2. The façade's own record: `autoglm.image_seconds` on each request's server span
   (generation/pipeline.py check_request_images: the wall time of check_images in its worker
   thread, queueing for a core included), matched to a window by the span's start.
3. In-process, on a quiet machine (image_cost.py): check_images alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from autoglm.bench.stats import Dist, Summary

if TYPE_CHECKING:  # report.py imports this module
    from opentelemetry.proto.trace.v1 import trace_pb2

    from autoglm.bench.report import BenchReport, RunResult

SCENARIO = "images"
IMAGE_SECONDS = "autoglm.image_seconds"  # generation/pipeline.py check_request_images
FRONT_DOORS = ("facade", "openai")  # the paths that send the screenshot through the façade
TEXT_TWIN = "text"


def cpu_ms_per_request(s: Summary, group: str) -> float:
    """CPU milliseconds of a process group per request started in the window (NaN if unknown).
    At a steady load the window's CPU is the work of about as many requests as start in it."""
    seconds = s.cpu.get(group)
    if seconds is None or not s.requests:
        return math.nan
    return seconds / s.requests * 1e3


def tokens_per_request(s: Summary) -> float:
    return s.output_tokens / s.requests if s.requests else math.nan


def image_seconds(spans: Iterable[trace_pb2.Span]) -> list[tuple[int, float]]:
    """(start, seconds) of every span carrying `autoglm.image_seconds`, start in Unix ns."""
    out = []
    for span in spans:
        for kv in span.attributes:
            if kv.key == IMAGE_SECONDS:
                out.append((span.start_time_unix_nano, kv.value.double_value))
    return out


def in_window(samples: Iterable[tuple[int, float]], window_ns: tuple[int, int]) -> list[float]:
    """The seconds of the samples that started in [start, end)."""
    start, end = window_ns
    return [seconds for t, seconds in samples if start <= t < end]


def dist_json(seconds: Sequence[float]) -> dict[str, float | int]:
    d = Dist.of_seconds(seconds)
    return {"p50_ms": d.p50, "p90_ms": d.p90, "mean_ms": d.mean, "count": d.count}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def image_comparison(
    runs: Mapping[str, RunResult], spans: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """One level: each front door against direct, and the façade's CPU per request with and
    without the image. `runs`: path → run of this level (direct required); `spans`: path →
    dist_json of its window's image seconds."""
    d = runs["direct"]
    ds = d.summary
    out: dict[str, Any] = {
        "scenario": d.scenario,
        "level": d.level,
        "direct_ttft_p50_ms": ds.ttft_ms.p50,
        "direct_ttft_p90_ms": ds.ttft_ms.p90,
        "direct_e2e_p50_ms": ds.e2e_ms.p50,
        "direct_tokens_per_s": ds.tokens_per_s,
        "direct_tokens_per_request": tokens_per_request(ds),
        "direct_triton_cpu_ms_per_request": cpu_ms_per_request(ds, "triton"),
        "direct_cores_busy": ds.cores_busy,
    }
    text = runs.get(TEXT_TWIN)
    text_cpu = cpu_ms_per_request(text.summary, "facade") if text is not None else math.nan
    if text is not None:
        ts = text.summary
        out.update(
            text_cpu_ms_per_request=text_cpu,
            text_tokens_per_request=tokens_per_request(ts),
            text_ttft_p50_ms=ts.ttft_ms.p50,
        )
    for path in FRONT_DOORS:
        if path not in runs:
            continue
        s = runs[path].summary
        cpu = cpu_ms_per_request(s, "facade")
        out.update(
            {
                f"{path}_ttft_p50_ms": s.ttft_ms.p50,
                f"{path}_ttft_p90_ms": s.ttft_ms.p90,
                f"{path}_added_ttft_p50_ms": s.ttft_ms.p50 - ds.ttft_ms.p50,
                f"{path}_added_e2e_p50_ms": s.e2e_ms.p50 - ds.e2e_ms.p50,
                f"{path}_tokens_per_s_ratio": _ratio(s.tokens_per_s, ds.tokens_per_s),
                f"{path}_tokens_per_request": tokens_per_request(s),
                f"{path}_cpu_ms_per_request": cpu,
                f"{path}_image_cpu_ms_per_request": cpu - text_cpu,
                f"{path}_triton_cpu_ms_per_request": cpu_ms_per_request(s, "triton"),
                f"{path}_client_cpu_ms_per_request": cpu_ms_per_request(s, "loadgen"),
                f"{path}_cores_busy": s.cores_busy,
                f"{path}_image_seconds": dict((spans or {}).get(path, {})),
            }
        )
    return out


def image_runs(report: BenchReport) -> list[dict[str, RunResult]]:
    """The image scenario's runs by level (run order), each path → run."""
    levels: dict[str, dict[str, RunResult]] = {}
    for r in report.runs:
        if r.scenario == SCENARIO:
            levels.setdefault(r.level, {})[r.path] = r
    return [runs for runs in levels.values() if "direct" in runs]


def image_comparisons(report: BenchReport) -> list[dict[str, Any]]:
    seconds = report.images.get("image_seconds", {})
    return [
        image_comparison(runs, seconds.get(runs["direct"].level)) for runs in image_runs(report)
    ]


def _f(v: Any, digits: int = 1) -> str:
    if not isinstance(v, int | float) or math.isnan(v):
        return "-"
    return f"{v:.{digits}f}"


def _signed(v: Any, digits: int = 1) -> str:
    return "-" if not isinstance(v, int | float) or math.isnan(v) else f"{v:+.{digits}f}"


def _screens(info: Mapping[str, Any]) -> str:
    w, h = info.get("source_size", ("?", "?"))
    rw, rh = info.get("resized_size", ("?", "?"))
    return (
        f"{info.get('screenshots')} PNG screenshots {w}x{h}, mean "
        f"{_f(info.get('png_bytes_mean', math.nan) / 1e6, 2)} MB "
        f"({_f(info.get('base64_bytes_mean', math.nan) / 1e6, 2)} MB as base64); the façade "
        f"resizes each to {rw}x{rh} ({_f(info.get('resized_bytes_mean', math.nan) / 1e3, 0)} kB "
        f"PNG), {info.get('image_tokens')} image tokens"
    )


def image_lines(report: BenchReport) -> list[str]:
    comparisons = image_comparisons(report)
    cost = report.images.get("cost")
    if not comparisons and not cost:
        return []
    lines = [
        "",
        "images (the agent's step: system prompt, screenshot, instruction; streamed) vs direct "
        "(same run):",
    ]
    if cost:
        lines.append(f"  {_screens(cost)}")
    for c in comparisons:
        head = f"  {c['level']:<5} TTFT p50 direct {_f(c['direct_ttft_p50_ms'])} ms"
        cpu = [f"text-only gRPC {_f(c.get('text_cpu_ms_per_request'))} ms"]
        image = []
        spans = []
        for path, label in (("facade", "gRPC"), ("openai", "OpenAI")):
            if f"{path}_ttft_p50_ms" not in c:
                continue
            head += (
                f", {label} {_f(c[f'{path}_ttft_p50_ms'])} "
                f"({_signed(c[f'{path}_added_ttft_p50_ms'])}); tok/s "
                f"×{_f(c[f'{path}_tokens_per_s_ratio'], 3)}, E2E p50 "
                f"{_signed(c[f'{path}_added_e2e_p50_ms'])} ms"
            )
            cpu.insert(-1, f"{label} {_f(c[f'{path}_cpu_ms_per_request'])} ms")
            image.append(f"{label} {_f(c[f'{path}_image_cpu_ms_per_request'])} ms")
            sec = c[f"{path}_image_seconds"]
            spans.append(f"{label} {_f(sec.get('p50_ms', math.nan))} ms (n={sec.get('count', 0)})")
        lines.append(head)
        lines.append(
            f"        façade CPU per request: {', '.join(cpu)} → image handling "
            f"{', '.join(image) or '-'}; tokens/request {_f(c['direct_tokens_per_request'])} "
            f"(text-only {_f(c.get('text_tokens_per_request'))})"
        )
        lines.append(
            f"        autoglm.image_seconds p50: {', '.join(spans) or '-'}; Triton CPU per "
            f"request {_f(c['direct_triton_cpu_ms_per_request'])} ms (direct); cores busy "
            f"{_f(c['direct_cores_busy'], 2)} (direct)"
        )
    if cost:
        chk, eng, url = cost["check_images"], cost["engine_request"], cost["data_url_decode"]
        lines.append(
            f"  in-process, quiet machine (median of {cost['screenshots']}×{cost['repeats']}): "
            f"check_images {_f(chk['cpu_ms_p50'])} ms CPU ({_f(chk['wall_ms_p50'])} ms wall); "
            f"engine request with base64 {_f(eng['cpu_ms_p50'], 2)} ms; data URL decode "
            f"{_f(url['cpu_ms_p50'], 2)} ms"
        )
    return lines
