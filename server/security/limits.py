"""Admission control: global and per-principal concurrency, requests per minute, tokens per request.

Pure logic with an injectable clock. Everything runs synchronously on the one event loop (no
awaits inside), so no lock is needed; it is not thread-safe. A refused request fails at once with
ResourceExhausted (plus RetryInfo where waiting helps): nothing waits and nothing is queued, so a
flood costs a dict lookup per request instead of memory.

Policy choice for `sampling.max_tokens` above the principal's limit: RESOURCE_EXHAUSTED without
RetryInfo (the request asks for more of a metered resource than the principal's quota allows),
not INVALID_ARGUMENT (the request is well-formed and valid for another principal) nor
PERMISSION_DENIED (which clients read as "this token may not call this at all"). The missing
RetryInfo tells well-behaved clients that retrying the same request is pointless.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from autoglm.server.errors import ResourceExhausted

__all__ = [
    "Admission",
    "AdmissionSnapshot",
    "EffectiveLimits",
    "LimitSettings",
    "PrincipalLimits",
    "Ticket",
]

# What a caller refused for concurrency is told to wait: slots free when a stream ends, which we
# cannot predict; one second keeps retry storms slow without making clients sleep for long.
CONCURRENCY_RETRY_AFTER_S = 1.0
# Idle principals (no stream in flight, bucket full) are forgotten at most this often.
_SWEEP_INTERVAL_S = 60.0


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class LimitSettings:
    """Server-wide limits and the per-principal defaults."""

    max_in_flight: int = 256  # admitted requests across all principals
    max_streams_per_principal: int = 16
    requests_per_minute: int = 600  # per principal; bursts up to this many at once
    max_tokens_per_request: int = 4096  # per principal: sampling.max_tokens ceiling

    def __post_init__(self) -> None:
        for name in (
            "max_in_flight",
            "max_streams_per_principal",
            "requests_per_minute",
            "max_tokens_per_request",
        ):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class PrincipalLimits:
    """Per-principal overrides, meant to live in the token record; None = the server default.

    An override may be higher than the default (a larger tenant); `max_in_flight` still caps all.
    """

    max_streams: int | None = None
    requests_per_minute: int | None = None
    max_tokens_per_request: int | None = None

    def __post_init__(self) -> None:
        _positive("max_streams", self.max_streams)
        _positive("requests_per_minute", self.requests_per_minute)
        _positive("max_tokens_per_request", self.max_tokens_per_request)

    def to_json(self) -> dict[str, int]:
        """Only the overrides that are set, for the token file."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PrincipalLimits | None:
        if not data:
            return None
        unknown = set(data) - {"max_streams", "requests_per_minute", "max_tokens_per_request"}
        if unknown:
            raise ValueError(f"unknown limits: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits that applied to one admitted request."""

    max_streams: int
    requests_per_minute: int
    max_tokens_per_request: int


@dataclass(frozen=True)
class AdmissionSnapshot:
    in_flight: int
    per_principal: Mapping[str, int]  # principals with at least one request in flight
    tracked_principals: int  # rate buckets held in memory


class _Bucket:
    """Token bucket: capacity = rpm (the burst), refilled at rpm/60 per second."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rpm: int, now: float) -> None:
        self.capacity = float(rpm)
        self.rate = rpm / 60.0
        self.tokens = self.capacity
        self.updated = now

    def refill(self, rpm: int, now: float) -> None:
        # The principal's rpm may change while the bucket lives (token record edited).
        self.capacity, self.rate = float(rpm), rpm / 60.0
        elapsed = max(0.0, now - self.updated)  # a clock going backwards must not drain it
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now

    def wait_s(self) -> float:
        """Seconds until one whole token is available (0 if one is)."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


class Ticket:
    """An admitted request's slots. Release exactly once: use it as a (sync or async) context
    manager right after `admit` with no await in between, so cancellation cannot leak it."""

    __slots__ = ("_admission", "_released", "limits", "principal_key")

    def __init__(self, admission: Admission, principal_key: str, limits: EffectiveLimits) -> None:
        self._admission = admission
        self._released = False
        self.principal_key = principal_key
        self.limits = limits

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Frees the slots; later calls do nothing."""
        if not self._released:
            self._released = True
            self._admission._release(self.principal_key)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Ticket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Admission:
    """Admits or refuses requests; see the module docstring."""

    def __init__(
        self, settings: LimitSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._in_flight = 0
        self._per_principal: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._swept_at = clock()

    def effective(self, limits: PrincipalLimits | None) -> EffectiveLimits:
        s = self._settings
        o = limits or PrincipalLimits()
        return EffectiveLimits(
            max_streams=o.max_streams or s.max_streams_per_principal,
            requests_per_minute=o.requests_per_minute or s.requests_per_minute,
            max_tokens_per_request=o.max_tokens_per_request or s.max_tokens_per_request,
        )

    def admit(
        self, principal_key: str, limits: PrincipalLimits | None, requested_tokens: int
    ) -> Ticket:
        """A Ticket holding one global and one per-principal slot, or ResourceExhausted.

        Checks run cheapest-and-permanent first; a refusal changes no state (a refused request
        does not spend a rate token).
        """
        if requested_tokens < 0:
            raise ValueError("requested_tokens must not be negative")
        now = self._clock()
        self._maybe_sweep(now)
        eff = self.effective(limits)
        if requested_tokens > eff.max_tokens_per_request:
            raise ResourceExhausted(
                f"sampling.max_tokens {requested_tokens} exceeds this principal's limit of "
                f"{eff.max_tokens_per_request} tokens per request",
                limit="max_tokens",
            )
        if self._in_flight >= self._settings.max_in_flight:
            raise ResourceExhausted(
                f"server busy: {self._settings.max_in_flight} requests in flight (global limit)",
                retry_after_s=CONCURRENCY_RETRY_AFTER_S,
                limit="global_concurrency",
            )
        if self._per_principal.get(principal_key, 0) >= eff.max_streams:
            raise ResourceExhausted(
                f"too many concurrent requests: limit {eff.max_streams} per principal",
                retry_after_s=CONCURRENCY_RETRY_AFTER_S,
                limit="principal_concurrency",
            )
        bucket = self._bucket(principal_key, eff.requests_per_minute, now)
        if bucket.tokens < 1.0:
            raise ResourceExhausted(
                f"rate limit: {eff.requests_per_minute} requests per minute per principal",
                retry_after_s=_round_up_ms(bucket.wait_s()),
                limit="rate",
            )
        bucket.tokens -= 1.0
        self._in_flight += 1
        self._per_principal[principal_key] = self._per_principal.get(principal_key, 0) + 1
        return Ticket(self, principal_key, eff)

    def snapshot(self) -> AdmissionSnapshot:
        return AdmissionSnapshot(
            in_flight=self._in_flight,
            per_principal=dict(self._per_principal),
            tracked_principals=len(self._buckets),
        )

    def sweep(self) -> None:
        """Forgets principals with nothing in flight and a full bucket (they behave as new)."""
        now = self._clock()
        self._swept_at = now
        for key in list(self._buckets):
            bucket = self._buckets[key]
            bucket.refill(int(bucket.capacity), now)
            if bucket.tokens >= bucket.capacity and key not in self._per_principal:
                del self._buckets[key]

    def _maybe_sweep(self, now: float) -> None:
        # Keys are token ids or principal names: bounded by the token store, but a long-running
        # server sees many over time. An amortised sweep keeps memory in line with the active set.
        if now - self._swept_at >= _SWEEP_INTERVAL_S:
            self.sweep()

    def _bucket(self, key: str, rpm: int, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(rpm, now)
        else:
            bucket.refill(rpm, now)
        return bucket

    def _release(self, key: str) -> None:
        self._in_flight -= 1
        remaining = self._per_principal[key] - 1
        if remaining:
            self._per_principal[key] = remaining
        else:
            del self._per_principal[key]


def _round_up_ms(seconds: float) -> float:
    # Rounded up: a client that waits exactly retry_after_s must then succeed.
    # The epsilon absorbs float noise (0.1 s must not become 0.101 s).
    return math.ceil(seconds * 1000.0 - 1e-6) / 1000.0
