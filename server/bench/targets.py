"""The issue's targets as pure checks of one run's figures against the same run's baseline.

Paced like a GPU (the synthetic engine at e.g. 40 tokens/s per stream, 64 streams):
  façade tokens/s >= 0.99 × direct, added p50 TTFT <= 1 ms, added p99 ITL <= 2 ms.
Unpaced: façade CPU per relayed token <= the bare direct consumer's CPU per token.
Scale-out (`serve --workers N`, SO_REUSEPORT): relay tokens/s per façade core, and the cores it
takes to carry one H100's output (28,000 tokens/s, the issue's figure) <= 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from autoglm.server.bench.stats import Summary

THROUGHPUT_RATIO_MIN = 0.99
ADDED_TTFT_P50_MAX_MS = 1.0
ADDED_ITL_P99_MAX_MS = 2.0
H100_TOKENS_PER_S = 28_000.0  # issue #8: what one H100 generates, to be carried by the façade
H100_CORES_MAX = 2.0


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
    # With --floor: the same figure for the direct path measured twice in the run (A/A), as a
    # magnitude. A measured value within it is as large as this run's own noise.
    noise: float = math.nan

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        text = f"[{verdict}] {self.name}: {self.measured:.3f} {self.unit} (target {self.limit:g})"
        if not math.isnan(self.noise):
            text += f"; direct vs direct again in this run: ±{self.noise:.3f} {self.unit}"
        return text


def _at_most(name: str, measured: float, limit: float, unit: str) -> Check:
    return Check(name, measured, limit, unit, not math.isnan(measured) and measured <= limit)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def paced_checks(direct: Summary, facade: Summary, control: Summary | None = None) -> list[Check]:
    """`control`: the direct path run again (--floor), whose differences from `direct` are
    the run's noise; each latency check carries it, and the throughput check its ratio's
    distance from 1."""

    def noise(figure: Callable[[Summary], float]) -> float:
        return math.nan if control is None else abs(figure(control) - figure(direct))

    ratio = _ratio(facade.tokens_per_s, direct.tokens_per_s)
    ttft = facade.ttft_ms.p50 - direct.ttft_ms.p50
    itl = facade.itl_ms.p99 - direct.itl_ms.p99
    return [
        Check(
            "façade/direct tokens/s",
            ratio,
            THROUGHPUT_RATIO_MIN,
            "×",
            not math.isnan(ratio) and ratio >= THROUGHPUT_RATIO_MIN,
            noise(lambda s: _ratio(s.tokens_per_s, direct.tokens_per_s)),
        ),
        replace(
            _at_most("added p50 TTFT", ttft, ADDED_TTFT_P50_MAX_MS, "ms"),
            noise=noise(lambda s: s.ttft_ms.p50),
        ),
        replace(
            _at_most("added p99 ITL", itl, ADDED_ITL_P99_MAX_MS, "ms"),
            noise=noise(lambda s: s.itl_ms.p99),
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
