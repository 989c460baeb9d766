"""The rollback guard: is the canary worse than the stable version? Measured, then acted on.

Every generation answered by a repository model is observed (api/calls.py): its version, whether
it failed on the server's side (the codes in SERVER_ERRORS: the engine failed, was unavailable or
too slow; a caller's bad request, a refusal by limits or a cancellation says nothing about the
version) and its time to first token. `VersionWindow` keeps the last `window_s` seconds per
(model, version). `compare` is the pure decision, over a window:
- nothing until the canary has `min_requests` calls in the window (a few early failures are
  noise);
- roll back when the canary's error rate exceeds the stable one's by more than
  `max_error_rate_delta` (absolute, e.g. 0.05 = five points);
- roll back when the canary's TTFT p99 exceeds the stable one's times `max_ttft_ratio`, once
  both have `min_requests` first tokens in the window.
`run_guard` applies it every `interval_s` seconds to each model with a canary and, when it says
so, ends the canary (ModelVersions.rollback) and hands the figures to `on_rollback` (audited by
app.py as `model.rollback`, the figures as its reason).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from autoglm.server.engine.canary import Route

log = logging.getLogger("autoglm.server.engine.canary_guard")

SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
    }
)


@dataclass(frozen=True, slots=True)
class GuardSettings:
    window_s: float = 300.0
    min_requests: int = 50
    max_error_rate_delta: float = 0.05
    max_ttft_ratio: float = 1.5
    interval_s: float = 15.0

    def validate(self) -> None:
        for name in ("window_s", "interval_s", "max_ttft_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"canary guard {name}: {getattr(self, name)!r} must be > 0")
        if self.min_requests < 1:
            raise ValueError(f"canary guard min_requests: {self.min_requests} must be >= 1")
        if not 0 <= self.max_error_rate_delta < 1:
            raise ValueError(
                f"canary guard max_error_rate_delta: {self.max_error_rate_delta!r} must be in "
                "[0, 1)"
            )


@dataclass(frozen=True, slots=True)
class Stats:
    requests: int
    errors: int
    ttfts: tuple[float, ...]  # seconds, of the calls that produced a first token

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ttft_p99(self) -> float | None:
        return percentile(self.ttfts, 0.99)


def percentile(values: tuple[float, ...] | list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Verdict:
    rollback: bool
    reason: str


def compare(stable: Stats, canary: Stats, s: GuardSettings) -> Verdict:
    """Whether the canary is worse than the stable version over one window (pure)."""
    if canary.requests < s.min_requests:
        return Verdict(False, f"canary has {canary.requests} of {s.min_requests} requests")
    figures = (
        f"canary error rate {canary.error_rate:.3f} over {canary.requests} requests vs stable "
        f"{stable.error_rate:.3f} over {stable.requests} (margin {s.max_error_rate_delta})"
    )
    if canary.error_rate - stable.error_rate > s.max_error_rate_delta:
        return Verdict(True, figures)
    c99, s99 = canary.ttft_p99, stable.ttft_p99
    if len(canary.ttfts) >= s.min_requests and len(stable.ttfts) >= s.min_requests:
        assert c99 is not None and s99 is not None
        ttft = (
            f"canary TTFT p99 {c99 * 1000:.1f} ms vs stable {s99 * 1000:.1f} ms "
            f"(ratio limit {s.max_ttft_ratio})"
        )
        if c99 > s99 * s.max_ttft_ratio:
            return Verdict(True, f"{ttft}; {figures}")
        return Verdict(False, f"{ttft}; {figures}")
    return Verdict(False, figures)


class VersionWindow:
    """Outcomes of the last `window_s` seconds per (model, version); fed by every generation."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._calls: dict[tuple[str, int], deque[tuple[float, bool, float | None]]] = {}

    def observe(self, model: str, version: int, code: grpc.StatusCode, ttft: float | None) -> None:
        calls = self._calls.setdefault((model, version), deque())
        calls.append((self._clock(), code in SERVER_ERRORS, ttft))
        self._trim(calls)

    def stats(self, model: str, version: int) -> Stats:
        calls = self._calls.get((model, version), deque())
        self._trim(calls)
        return Stats(
            len(calls),
            sum(1 for _, failed, _ in calls if failed),
            tuple(t for _, _, t in calls if t is not None),
        )

    def forget(self, model: str, version: int) -> None:
        self._calls.pop((model, version), None)

    def _trim(self, calls: deque[tuple[float, bool, float | None]]) -> None:
        oldest = self._clock() - self.window_s
        while calls and calls[0][0] < oldest:
            calls.popleft()


async def check_once(
    routes: Callable[[], dict[str, Route]],
    window: VersionWindow,
    settings: GuardSettings,
    rollback: Callable[[str, str], Awaitable[int | None]],
) -> list[tuple[str, int, str]]:
    """Compare every running canary with its stable version; roll back the worse ones.
    Returns (model, canary version, reason) of each rollback."""
    done: list[tuple[str, int, str]] = []
    for model, route in sorted(routes().items()):
        if route.canary is None:
            continue
        verdict = compare(
            window.stats(model, route.stable), window.stats(model, route.canary), settings
        )
        if not verdict.rollback:
            continue
        reason = f"rollback guard: {verdict.reason}"
        version = await rollback(model, reason)
        if version is not None:
            window.forget(model, version)
            done.append((model, version, reason))
    return done


async def run_guard(
    routes: Callable[[], dict[str, Route]],
    window: VersionWindow,
    settings: GuardSettings,
    rollback: Callable[[str, str], Awaitable[int | None]],
    on_rollback: Callable[[str, int, str], None],
    follow: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """`check_once` every `interval_s` seconds until cancelled, after `follow` (routes catch up
    with canaries ended elsewhere: ModelVersions.follow_records); a failed check is logged."""
    while True:
        await asyncio.sleep(settings.interval_s)
        try:
            if follow is not None:
                await follow()
            for model, version, reason in await check_once(routes, window, settings, rollback):
                on_rollback(model, version, reason)
        except Exception:
            log.exception("canary guard check failed; the canaries keep running")
