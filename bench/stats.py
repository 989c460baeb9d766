"""Pure statistics over request records: percentiles and a per-run summary (no I/O)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the load generator saw it (monotonic seconds)."""

    start: float
    end: float
    # Arrival time and token count of every streamed chunk that carried tokens.
    chunks: tuple[tuple[float, int], ...] = ()
    status: str = "OK"  # a grpc.StatusCode name

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.chunks)

    @property
    def ttft(self) -> float | None:
        return self.chunks[0][0] - self.start if self.chunks else None

    def inter_token_latencies(self) -> list[float]:
        """Gaps between consecutive chunks, spread over the tokens of the later chunk."""
        out: list[float] = []
        for (t0, _), (t1, n) in zip(self.chunks, self.chunks[1:], strict=False):
            out.extend([(t1 - t0) / n] * n)
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's
    default "linear" method); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: q must be within [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Dist:
    """p50/p90/p99 and mean, in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    count: int

    @staticmethod
    def of_seconds(values: Sequence[float]) -> Dist:
        ms = [v * 1000 for v in values]
        mean = sum(ms) / len(ms) if ms else math.nan
        return Dist(percentile(ms, 50), percentile(ms, 90), percentile(ms, 99), mean, len(ms))


@dataclass(frozen=True, slots=True)
class Summary:
    """What one run (one path, one load level) measured, over its measurement window."""

    requests: int
    ok: int
    errors: dict[str, int]
    output_tokens: int
    duration_s: float
    ttft_ms: Dist
    itl_ms: Dist
    e2e_ms: Dist
    cpu: dict[str, float] = field(default_factory=dict)  # process → CPU seconds in the window
    chunks: int = 0  # streamed messages that carried tokens and arrived in the window

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        """Requests started in the window and completed OK, per second of window."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def tokens_per_chunk(self) -> float:
        """Tokens per streamed message (> 1 when the façade coalesced them)."""
        return self.output_tokens / self.chunks if self.chunks else math.nan

    @property
    def cores_busy(self) -> float:
        """Cores the machine kept busy on average over the window: its busy CPU seconds
        ("machine": every process, foreign ones included) ÷ the window; without that figure,
        the measured groups' sum. NaN when unknown."""
        if not self.cpu or self.duration_s <= 0:
            return math.nan
        busy = self.cpu.get("machine")
        if busy is None:
            busy = sum(self.cpu.values())
        return busy / self.duration_s

    def cpu_us_per_token(self, process: str) -> float:
        """CPU microseconds per output token of one process (NaN when unknown)."""
        seconds = self.cpu.get(process)
        if seconds is None or not self.output_tokens:
            return math.nan
        return seconds / self.output_tokens * 1e6


def summarize(
    records: Sequence[RequestRecord],
    window: tuple[float, float],
    cpu: dict[str, float] | None = None,
) -> Summary:
    """Steady-state figures over the measurement window [start, end).

    Latencies come from requests that started inside the window (they may finish after it);
    throughput counts the tokens that arrived inside it, whichever request carried them, so
    warm-up requests still streaming and the drain at the end neither inflate nor dilute it.
    """
    start, end = window
    measured = [r for r in records if start <= r.start < end]
    ok = [r for r in measured if r.ok]
    errors = Counter(r.status for r in measured if not r.ok)
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    itls = [gap for r in ok for gap in r.inter_token_latencies()]
    arrived = [n for r in records for t, n in r.chunks if start <= t < end]
    return Summary(
        requests=len(measured),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        output_tokens=sum(arrived),
        duration_s=end - start,
        ttft_ms=Dist.of_seconds(ttfts),
        itl_ms=Dist.of_seconds(itls),
        e2e_ms=Dist.of_seconds([r.end - r.start for r in ok]),
        cpu=dict(cpu or {}),
        chunks=len(arrived),
    )
