"""The load generator against a fake stream: concurrency, rate, request count, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from autoglm.bench.loadgen import LoadSpec, run_load
from autoglm.bench.workload import BenchRequest, LengthDist, Workload


def _workload() -> Workload:
    return Workload(
        LengthDist(4, 4), LengthDist(3, 3), lambda s: [1] * len(s), lambda i: "a" * len(i)
    )


class _Fake:
    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.reached: list[float] = []  # when 1, 2, 3 … requests were first in flight

    async def stream(self, req: BenchRequest) -> AsyncIterator[int]:
        self.in_flight += 1
        if self.in_flight > self.peak:
            self.reached.append(time.monotonic())
        self.peak = max(self.peak, self.in_flight)
        try:
            for _ in range(req.max_tokens):
                await asyncio.sleep(0.005)
                yield 1
        finally:
            self.in_flight -= 1


async def test_concurrency_with_duration() -> None:
    fake = _Fake()
    marks: list[str] = []
    spec = LoadSpec(concurrency=3, warmup_s=0.05, duration_s=0.2)
    result = await run_load(fake.stream, _workload(), spec, marks.append)
    assert marks == ["start", "end"]
    assert fake.peak == 3
    t0, t1 = result.window
    assert t1 - t0 == pytest.approx(0.2, abs=0.05)
    assert all(r.ok and r.tokens == 3 for r in result.records)


async def test_ramp_up_spreads_stream_starts() -> None:
    fake = _Fake()
    spec = LoadSpec(concurrency=4, warmup_s=0.2, duration_s=0.05, ramp_up_s=0.2)
    await run_load(fake.stream, _workload(), spec)
    # Stream i joins i × 50 ms after the first one (each request takes ~15 ms, so the streams
    # already started keep going meanwhile).
    gaps = [b - a for a, b in zip(fake.reached, fake.reached[1:], strict=False)]
    assert len(gaps) == 3
    assert all(g == pytest.approx(0.05, abs=0.02) for g in gaps), gaps


async def test_no_ramp_up_starts_every_stream_at_once() -> None:
    fake = _Fake()
    spec = LoadSpec(concurrency=4, warmup_s=0.05, duration_s=0.05)
    await run_load(fake.stream, _workload(), spec)
    assert len(fake.reached) == 4
    assert fake.reached[-1] - fake.reached[0] < 0.01, fake.reached


async def test_request_count_and_rate() -> None:
    fake = _Fake()
    spec = LoadSpec(rate=200.0, warmup_s=0.0, duration_s=None, num_requests=10)
    result = await run_load(fake.stream, _workload(), spec)
    assert len(result.records) == 10


async def test_errors_become_status_names() -> None:
    async def failing(req: BenchRequest) -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("engine said no")

    spec = LoadSpec(concurrency=1, warmup_s=0.0, duration_s=None, num_requests=2)
    result = await run_load(failing, _workload(), spec)
    assert [r.status for r in result.records] == ["RuntimeError", "RuntimeError"]


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="exactly one of concurrency"):
        LoadSpec(concurrency=1, rate=1.0).validate()
    with pytest.raises(ValueError, match="duration and request count"):
        LoadSpec(concurrency=1, duration_s=None).validate()
    with pytest.raises(ValueError, match=r"ramp-up must be between 0 and the warm-up \(2 s\)"):
        LoadSpec(concurrency=1, warmup_s=2.0, ramp_up_s=3.0).validate()
    with pytest.raises(ValueError, match="ramp-up"):
        LoadSpec(concurrency=1, ramp_up_s=-1.0).validate()
    assert LoadSpec(concurrency=8).label == "c=8"
    assert LoadSpec(rate=2.5).label == "rate=2.5/s"
