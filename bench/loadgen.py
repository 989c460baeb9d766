"""When to send: a fixed number of concurrent streams, or a Poisson request rate.

The load generator times every streamed chunk itself (time.monotonic on arrival), so every
path is measured by the same code; a path only has to turn a BenchRequest into an async
iterator of per-chunk token counts. A path whose chunks do not say how many tokens they hold
(the OpenAI SSE path: text only, the request's total in its last `usage` chunk) yields 1 per
chunk as it arrives and finally a `Recount` with the true counts of those chunks. Warm-up
requests run under the same load but are left out of the latency figures; the measurement
window is [end of warm-up, end of duration).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from autoglm.bench.stats import RequestRecord
from autoglm.bench.workload import BenchRequest


@dataclass(frozen=True, slots=True)
class Recount:
    """Yielded last by a stream: the token counts of every chunk it yielded before, in order
    (replacing what it yielded for them; a 0 drops that chunk)."""

    counts: tuple[int, ...]


R = TypeVar("R")  # what a workload hands out: BenchRequest, or image_workload.ImageRequest
R_co = TypeVar("R_co", covariant=True)


class Requests(Protocol[R_co]):
    """A workload: workload.Workload (text prompts), image_workload.ImageWorkload."""

    def next(self) -> R_co: ...


# yields the token count of each chunk (and at most one Recount, last)
Stream = Callable[[BenchRequest], AsyncIterator[int | Recount]]
Mark = Callable[[str], None]  # called with "start" / "end" of the measurement window


@dataclass(frozen=True, slots=True)
class LoadSpec:
    concurrency: int | None = None  # streams kept in flight; or
    rate: float | None = None  # requests per second, Poisson arrivals
    warmup_s: float = 2.0
    duration_s: float | None = 10.0  # measurement window; or
    num_requests: int | None = None  # requests started after warm-up
    seed: int = 0
    # Concurrency mode: stream i starts at i × ramp_up_s / concurrency, within the warm-up.
    # 0 = every stream starts in the same instant; with equal lengths and a paced engine they
    # then stay in lock-step, all ending and starting again together (docs/benchmarks.md).
    ramp_up_s: float = 0.0

    def validate(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("load: give exactly one of concurrency and rate")
        if (self.duration_s is None) == (self.num_requests is None):
            raise ValueError("load: give exactly one of duration and request count")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("load: concurrency must be >= 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("load: rate must be > 0")
        if not 0 <= self.ramp_up_s <= self.warmup_s:
            raise ValueError(
                f"load: ramp-up must be between 0 and the warm-up ({self.warmup_s:g} s), "
                f"got {self.ramp_up_s:g} s"
            )

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.concurrency is not None else f"rate={self.rate:g}/s"


@dataclass(frozen=True, slots=True)
class LoadResult:
    records: list[RequestRecord]
    window: tuple[float, float]


async def timed(stream: Callable[[R], AsyncIterator[int | Recount]], req: R) -> RequestRecord:
    """Run one request; a failure becomes a record with its gRPC status name (or the error's
    `status_name`, e.g. an HTTP status, or else its type's name)."""
    start = time.monotonic()
    chunks: list[tuple[float, int]] = []
    status = "OK"
    try:
        async for n in stream(req):
            if isinstance(n, Recount):
                if len(n.counts) != len(chunks):
                    raise ValueError(f"recount of {len(n.counts)} chunks, {len(chunks)} seen")
                chunks = [(t, c) for (t, _), c in zip(chunks, n.counts, strict=True) if c]
            elif n:
                chunks.append((time.monotonic(), n))
    except grpc.aio.AioRpcError as exc:
        status = exc.code().name
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a path's own failure (e.g. an engine error message)
        status = getattr(exc, "status_name", None) or type(exc).__name__
    return RequestRecord(start, time.monotonic(), tuple(chunks), status)


class _Window:
    def __init__(self, spec: LoadSpec, mark: Mark) -> None:
        self.spec = spec
        self.mark = mark
        self.t0 = time.monotonic() + spec.warmup_s
        self.t1 = self.t0 + spec.duration_s if spec.duration_s is not None else float("inf")
        self.started_after_warmup = 0

    async def mark_start(self) -> None:
        await asyncio.sleep(max(0.0, self.t0 - time.monotonic()))
        self.mark("start")

    def may_start(self) -> bool:
        now = time.monotonic()
        if now >= self.t1:
            return False
        if self.spec.num_requests is not None and now >= self.t0:
            if self.started_after_warmup >= self.spec.num_requests:
                return False
            self.started_after_warmup += 1
        return True


async def run_load(
    stream: Callable[[R], AsyncIterator[int | Recount]],
    workload: Requests[R],
    spec: LoadSpec,
    mark: Mark = lambda _: None,
) -> LoadResult:
    """Drive the load; returns every record (warm-up included) and the measurement window."""
    spec.validate()
    win = _Window(spec, mark)
    records: list[RequestRecord] = []
    marker = asyncio.create_task(win.mark_start())
    if spec.concurrency is not None:

        async def worker(i: int) -> None:
            await asyncio.sleep(i * spec.ramp_up_s / spec.concurrency)
            while win.may_start():
                records.append(await timed(stream, workload.next()))

        workers = [asyncio.create_task(worker(i)) for i in range(spec.concurrency)]
        if spec.duration_s is not None:
            await asyncio.sleep(max(0.0, win.t1 - time.monotonic()))
            end = time.monotonic()
            mark("end")
        await asyncio.gather(*workers)
    else:
        assert spec.rate is not None
        rng = random.Random(spec.seed)
        tasks: set[asyncio.Task[None]] = set()

        async def one() -> None:
            records.append(await timed(stream, workload.next()))

        next_at = time.monotonic()
        while win.may_start():
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += rng.expovariate(spec.rate)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if spec.duration_s is not None:
            end = time.monotonic()
            mark("end")
        await asyncio.gather(*tasks)
    await marker  # (already done unless everything finished during warm-up)
    if spec.num_requests is not None:  # count mode: the window closes with the last request
        end = time.monotonic()
        mark("end")
    return LoadResult(records, (win.t0, end))
