"""The lora scenario: the real CPU model through the façade's gRPC API, on its own, with one LoRA
adapter, and with 8 adapters mixed across the streams (each request names the next one in turn),
level by level in the same run; tokens/s and TTFT side by side (`lora_lines`).

The adapters are real PEFT adapters of SmolLM2 made in-process (build_engine/tiny_lora.py) and
registered by `adapters.add` under the bench's model name, so the façade serves them
(`serve --adapters`) and the CPU engine applies them from the `lora_*` tensors (the first
request of each task carries its weights, engine/lora.py). Paths per level run back to back,
their order reversed from one level to the next, as runner.py does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoglm.bench.facade import FacadePath
from autoglm.bench.loadgen import LoadSpec
from autoglm.bench.report import BenchReport, RunResult
from autoglm.bench.runner import Scenario, _one, disturbed
from autoglm.bench.stack import BenchStack, EngineModel
from autoglm.bench.workload import LengthDist, Workload

SCENARIO = "lora"
ADAPTERS = 8  # the mixed path's adapters
BASE, ONE = "base", "lora-1"
MIXED = f"lora-{ADAPTERS}"
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LoraScenario:
    model: EngineModel  # the CPU model (EngineModel.tokens_per_second None)
    loads: tuple[LoadSpec, ...]
    output_len: LengthDist
    adapters: tuple[str, ...]  # registered adapters of `model`, ADAPTERS of them


def register_adapters(
    model_dir: Path, registry: Path, base: str, *, count: int = ADAPTERS, seed: int = 0
) -> tuple[str, ...]:
    """`count` PEFT adapters of the model in `model_dir`, registered in `registry` as adapters
    of the served model `base`; their names."""
    from autoglm.build_engine import adapters as ad
    from autoglm.build_engine.tiny_lora import make_adapter

    names = []
    for i in range(count):
        name = f"bench-lora-{i}"
        source = make_adapter(model_dir, registry.parent / "peft" / name, seed=seed + i + 1)
        ad.add(registry, name, base=base, base_dir=model_dir, source=source)
        names.append(name)
    return tuple(names)


def lora_paths(stack: BenchStack, sc: LoraScenario) -> tuple[FacadePath, ...]:
    def path(name: str, adapters: Sequence[str]) -> FacadePath:
        return FacadePath(
            stack.facade_endpoint, stack.pki, stack.token, sc.model.name, name=name,
            adapters=adapters,
        )  # fmt: skip

    return (path(BASE, ()), path(ONE, sc.adapters[:1]), path(MIXED, sc.adapters))


async def run_lora(
    stack: BenchStack,
    sc: LoraScenario,
    workload: Callable[[], Workload],
    report: BenchReport,
    log: Log,
    *,
    step: int = 0,
) -> None:
    """Every level on the three paths; the runs into `report`, the comparison into its notes."""
    scenario = Scenario(SCENARIO, sc.model, sc.loads, sc.output_len)
    paths = lora_paths(stack, sc)
    try:
        for i, load in enumerate(sc.loads):
            order = paths if (step + i) % 2 == 0 else paths[::-1]
            for path in order:
                t = time.monotonic()
                r = await _one(stack, path, scenario, load, workload())  # type: ignore[arg-type]
                report.runs.append(r)
                if disturbed(r):
                    report.notes.append(
                        f"DISTURBED: {SCENARIO} {load.label} {path.name}: other processes used "
                        f"{r.foreign_cpu_s:.1f} CPU-s in the {r.summary.duration_s:.0f} s "
                        "window; rerun on a quiet machine"
                    )
                s = r.summary
                log(
                    f"{SCENARIO:<9} {load.label:<8} {path.name:<7} {s.ok:>5} ok "
                    f"{sum(s.errors.values())} err {s.tokens_per_s:8.1f} tok/s "
                    f"TTFT p50 {s.ttft_ms.p50:7.1f} ms ({time.monotonic() - t:.0f} s)"
                )
    finally:
        for path in paths:
            await path.close()
    report.notes.extend(lora_lines(report.runs))


def lora_lines(runs: Sequence[RunResult]) -> list[str]:
    """Per level: tokens/s and TTFT p50 / p99 of base, one adapter and the mixed adapters."""
    levels: dict[str, dict[str, RunResult]] = {}
    for r in runs:
        if r.scenario == SCENARIO:
            levels.setdefault(r.level, {})[r.path] = r
    lines = []
    for level, by_path in levels.items():
        cells = []
        for name in (BASE, ONE, MIXED):
            r = by_path.get(name)
            if r is None:
                continue
            s = r.summary
            cells.append(
                f"{name} {s.tokens_per_s:.1f} tok/s TTFT p50 {s.ttft_ms.p50:.0f} ms"
                f" p99 {s.ttft_ms.p99:.0f} ms"
                + (f" ({sum(s.errors.values())} errors)" if s.errors else "")
            )
        lines.append(f"{SCENARIO} {level}: " + " | ".join(cells))
    return lines
