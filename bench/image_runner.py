"""The image scenario: the agent's screenshot step on every path, level by level, same run.

Per level the paths run back to back on the same Triton, in the order of runner.py (reversed
from one level to the next): direct (the vLLM contract, what the façade would send), the
façade's gRPC API through the client library, its OpenAI front door, and the gRPC API's text
twin (the same turns without the screenshot: the façade's cost of a request without image
handling). CPU is read from /proc at the edges of each window, as for the other scenarios.

The façade's spans are kept for this scenario (sink.keep_spans): each request's
`autoglm.image_seconds` is matched to the window it started in by its start time, which is
why the window's edges are also taken by the wall clock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from autoglm.bench import image_report
from autoglm.bench.image_paths import DirectImagePath, FacadeImagePath, OpenAIChatPath
from autoglm.bench.image_workload import ImageRequest, ImageWorkload
from autoglm.bench.loadgen import LoadSpec, run_load
from autoglm.bench.procstat import CpuMeter, descendants
from autoglm.bench.report import BenchReport, RunResult
from autoglm.bench.runner import disturbed
from autoglm.bench.stack import BenchStack, EngineModel
from autoglm.bench.stats import summarize

Log = Callable[[str], None]
ImagePath = DirectImagePath | FacadeImagePath | OpenAIChatPath

# How long the façade's last spans may take to reach the sink (its span exporter batches them,
# OTel's BatchSpanProcessor: 5 s by default) before the figures are written without them.
SPAN_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class ImageScenario:
    model: EngineModel  # the vision-language model (EngineModel.vl_dir)
    loads: tuple[LoadSpec, ...]
    requests: tuple[ImageRequest, ...]
    paths: tuple[str, ...]  # `--paths`: direct always; facade (with its text twin), openai
    name: str = image_report.SCENARIO


def image_paths(stack: BenchStack, sc: ImageScenario) -> tuple[ImagePath, ...]:
    assert stack.triton is not None
    name = sc.model.name
    out: list[ImagePath] = [DirectImagePath(stack.triton.grpc_target, stack.link)]
    if "facade" in sc.paths:
        out.append(FacadeImagePath(stack.facade_endpoint, stack.pki, stack.token, name))
    if "openai" in sc.paths:
        assert stack.openai_endpoint is not None, "StackOptions.openai"
        out.append(OpenAIChatPath(stack.openai_endpoint, stack.pki, stack.token, name))
    if "facade" in sc.paths:
        twin = FacadeImagePath(
            stack.facade_endpoint, stack.pki, stack.token, name, name=image_report.TEXT_TWIN
        )
        out.append(twin)
    return tuple(out)


async def _measure(
    stack: BenchStack,
    sc: ImageScenario,
    path: ImagePath,
    load: LoadSpec,
    requests: Sequence[ImageRequest],
) -> tuple[RunResult, tuple[int, int], int]:
    """One window: its run, its edges by the wall clock (Unix ns), and how many requests of it
    (warm-up included) the façade answered with an image checked."""
    assert stack.triton is not None and stack.triton.pid is not None
    groups = {
        "facade": stack.facade_pids(),
        "triton": [stack.triton.pid, *descendants(stack.triton.pid)],
        "loadgen": [os.getpid()],
    }
    meter = CpuMeter(groups)
    wall: dict[str, int] = {}

    def mark(what: str) -> None:
        meter.mark(what)
        wall[what] = time.time_ns()

    result = await run_load(path.stream, ImageWorkload(requests), load, mark)
    summary = summarize(result.records, result.window, meter.delta())
    run = RunResult(sc.name, sc.model.name, load.label, path.name, summary, meter.foreign())
    imaged = 0
    if path.name in image_report.FRONT_DOORS:
        imaged = sum(1 for r in result.records if r.ok)
    return run, (wall["start"], wall["end"]), imaged


async def run_images(
    stack: BenchStack, sc: ImageScenario, report: BenchReport, log: Log, *, step: int = 0
) -> None:
    """Every level of the scenario on every path; the figures into `report` (its runs, and
    report.images["image_seconds"])."""
    spans = stack.sink.keep_spans()
    twins = tuple(r.text_twin() for r in sc.requests)
    paths = image_paths(stack, sc)
    windows: dict[tuple[str, str], tuple[int, int]] = {}
    imaged = 0
    try:
        for i, load in enumerate(sc.loads):
            order = paths if (step + i) % 2 == 0 else paths[::-1]
            for path in order:
                t = time.monotonic()
                requests = twins if path.name == image_report.TEXT_TWIN else sc.requests
                r, window, n = await _measure(stack, sc, path, load, requests)
                windows[(load.label, path.name)] = window
                imaged += n
                report.runs.append(r)
                if disturbed(r):
                    report.notes.append(
                        f"DISTURBED: {sc.name} {load.label} {path.name}: other processes used "
                        f"{r.foreign_cpu_s:.1f} CPU-s in the {r.summary.duration_s:.0f} s "
                        "window; rerun on a quiet machine"
                    )
                s = r.summary
                log(
                    f"{sc.name:<9} {load.label:<8} {path.name:<7} {s.ok:>5} ok "
                    f"{sum(s.errors.values())} err {s.tokens_per_s:8.1f} tok/s "
                    f"TTFT p50 {s.ttft_ms.p50:7.1f} ms "
                    f"façade CPU {image_report.cpu_ms_per_request(s, 'facade'):6.1f} ms/request "
                    f"foreign CPU {r.foreign_cpu_s:.2f} s ({time.monotonic() - t:.0f} s)"
                )
    finally:
        for path in paths:
            await path.close()
    samples = await _image_seconds(spans, imaged)
    if len(samples) < imaged:
        report.notes.append(
            f"images: {len(samples)} of {imaged} image requests' spans reached the sink within "
            f"{SPAN_WAIT_S:g} s (autoglm.image_seconds figures are of those)"
        )
    by_level: dict[str, dict[str, dict[str, float | int]]] = {}
    for (level, path), window in windows.items():
        if path in image_report.FRONT_DOORS:
            seconds = image_report.in_window(samples, window)
            by_level.setdefault(level, {})[path] = image_report.dist_json(seconds)
    report.images["image_seconds"] = by_level


async def _image_seconds(spans: list[Span], expected: int) -> list[tuple[int, float]]:
    """The image seconds of the kept spans, once `expected` have arrived (or SPAN_WAIT_S)."""
    deadline = time.monotonic() + SPAN_WAIT_S
    while True:
        samples = image_report.image_seconds(list(spans))
        if len(samples) >= expected or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)
