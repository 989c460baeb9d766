"""The issue's targets as pure checks of one run's figures against the same run's baseline.

Paced like a GPU (the synthetic engine at e.g. 40 tokens/s per stream, 64 streams):
  façade tokens/s >= 0.99 × direct, added p50 TTFT <= 1 ms, added p99 ITL <= 2 ms.
Unpaced: façade CPU per relayed token <= the bare direct consumer's CPU per token.
Scale-out (`serve --workers N`, SO_REUSEPORT): relay tokens/s per façade core, and the cores it
takes to carry one H100's output (28,000 tokens/s, the issue's figure) <= 2.
The OpenAI front door (issue #21), paced: its tokens/s >= 0.99 × direct, the façade's CPU per
token on the SSE path <= 1.25 × on the gRPC path, and its added p50 TTFT <= the gRPC path's + 1 ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from autoglm.bench.stats import Summary

THROUGHPUT_RATIO_MIN = 0.99
ADDED_TTFT_P50_MAX_MS = 1.0
ADDED_ITL_P99_MAX_MS = 2.0
H100_TOKENS_PER_S = 28_000.0  # issue #8: what one H100 generates, to be carried by the façade
H100_CORES_MAX = 2.0
OPENAI_CPU_RATIO_MAX = 1.25  # issue #21: façade CPU/token, SSE path ÷ gRPC path
OPENAI_ADDED_TTFT_OVER_GRPC_MAX_MS = 1.0  # issue #21: added p50 TTFT <= the gRPC path's + this


def tokens_per_core_s(s: Summary) -> float:
    """Relayed tokens per second of façade CPU time (= tokens/s one fully busy core carries)."""
    cpu = s.cpu.get("facade")
    return s.output_tokens / cpu if cpu else math.nan


def cores_for(s: Summary, tokens_per_s: float = H100_TOKENS_PER_S) -> float:
    per_core = tokens_per_core_s(s)
    return tokens_per_s / per_core if per_core else math.nan


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    measured: float
    limit: float
    unit: str
    passed: bool
    # With --floor: the same figure for the floors' paths in the same run (report.FLOORS),
    # e.g. (("relay", 6.9), ("hop", 0.2), ("control", -1.5)) for an added TTFT. The control is
    # the direct path again: its figure is what this run reads when nothing is added.
    same_run: tuple[tuple[str, float], ...] = ()

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        text = f"[{verdict}] {self.name}: {self.measured:.3f} {self.unit} (target {self.limit:g})"
        if self.same_run:
            figures = ", ".join(f"{path} {value:.3f}" for path, value in self.same_run)
            text += f"; the same in this run for {figures}"
        return text


def _at_most(name: str, measured: float, limit: float, unit: str) -> Check:
    return Check(name, measured, limit, unit, not math.isnan(measured) and measured <= limit)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def paced_checks(
    direct: Summary, facade: Summary, floors: Mapping[str, Summary] | None = None
) -> list[Check]:
    """`floors` (--floor): the floors' runs at the same level, by path ("relay", "hop",
    "control"); each check then carries their figure against the same direct run, so a
    verdict reads against what the floors (and the run's own noise) reach."""

    def added(figure: Callable[[Summary], float]) -> float:
        return figure(facade) - figure(direct)

    def same_run(figure: Callable[[Summary], float]) -> tuple[tuple[str, float], ...]:
        return tuple((path, figure(s) - figure(direct)) for path, s in (floors or {}).items())

    def throughput(s: Summary) -> float:
        return _ratio(s.tokens_per_s, direct.tokens_per_s)

    def ttft(s: Summary) -> float:
        return s.ttft_ms.p50

    def itl(s: Summary) -> float:
        return s.itl_ms.p99

    ratio = throughput(facade)
    return [
        Check(
            "façade/direct tokens/s",
            ratio,
            THROUGHPUT_RATIO_MIN,
            "×",
            not math.isnan(ratio) and ratio >= THROUGHPUT_RATIO_MIN,
            tuple((path, throughput(s)) for path, s in (floors or {}).items()),
        ),
        replace(
            _at_most("added p50 TTFT", added(ttft), ADDED_TTFT_P50_MAX_MS, "ms"),
            same_run=same_run(ttft),
        ),
        replace(
            _at_most("added p99 ITL", added(itl), ADDED_ITL_P99_MAX_MS, "ms"),
            same_run=same_run(itl),
        ),
    ]


def unpaced_checks(direct: Summary, facade: Summary) -> list[Check]:
    """CPU per token: the façade process vs the bare consumer (the load generator process)."""
    facade_cpu = facade.cpu_us_per_token("facade")
    direct_cpu = direct.cpu_us_per_token("loadgen")
    ratio = facade_cpu / direct_cpu if direct_cpu else math.nan
    return [_at_most("façade CPU/token ÷ direct consumer CPU/token", ratio, 1.0, "×")]


def scaleout_checks(facade: Summary) -> list[Check]:
    """Façade cores needed for one H100's tokens/s, from its CPU per token under load."""
    return [
        _at_most(
            f"façade cores for {H100_TOKENS_PER_S:,.0f} tokens/s "
            f"({tokens_per_core_s(facade):,.0f} tokens/s per core)",
            cores_for(facade),
            H100_CORES_MAX,
            "cores",
        )
    ]


def openai_checks(direct: Summary, grpc: Summary | None, openai: Summary) -> list[Check]:
    """The OpenAI path (SSE) against direct and against the gRPC path of the same run and level
    (the façade process is billed on both: its CPU per token is compared like for like). Without
    a gRPC run (`--paths direct,openai`) only the throughput is judged."""
    ratio = _ratio(openai.tokens_per_s, direct.tokens_per_s)
    checks = [
        Check(
            "OpenAI/direct tokens/s",
            ratio,
            THROUGHPUT_RATIO_MIN,
            "×",
            not math.isnan(ratio) and ratio >= THROUGHPUT_RATIO_MIN,
        )
    ]
    if grpc is None:
        return checks
    cpu = _ratio(openai.cpu_us_per_token("facade"), grpc.cpu_us_per_token("facade"))
    added = openai.ttft_ms.p50 - direct.ttft_ms.p50
    limit = grpc.ttft_ms.p50 - direct.ttft_ms.p50 + OPENAI_ADDED_TTFT_OVER_GRPC_MAX_MS
    return [
        *checks,
        _at_most("façade CPU/token, SSE ÷ gRPC", cpu, OPENAI_CPU_RATIO_MAX, "×"),
        # the limit is this run's gRPC figure + 1 ms (NaN when unknown: never a pass)
        _at_most("OpenAI added p50 TTFT (target: gRPC's + 1 ms)", added, limit, "ms"),
    ]
