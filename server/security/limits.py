"""Admission control: global and per-principal concurrency, requests per minute, tokens per minute,
tokens per request, kept in this process's memory (shared_limits.py keeps the per-principal
books in Redis with the same decisions, for several processes or pods).

Pure logic with an injectable clock. Everything runs synchronously on the one event loop (no
awaits inside), so no lock is needed; it is not thread-safe. A refused request fails at once with
ResourceExhausted (plus RetryInfo where waiting helps): nothing waits and nothing is queued, so a
flood costs a dict lookup per request instead of memory.

Policy choice for `sampling.max_tokens` above the principal's limit: RESOURCE_EXHAUSTED without
RetryInfo (the request asks for more of a metered resource than the principal's quota allows),
not INVALID_ARGUMENT (the request is well-formed and valid for another principal) nor
PERMISSION_DENIED (which clients read as "this token may not call this at all"). The missing
RetryInfo tells well-behaved clients that retrying the same request is pointless.

Tokens per minute (TPM): a second token bucket per principal, of capacity `tokens_per_minute`,
refilled continuously at tokens_per_minute/60 per second (the same shape as the requests-per-
minute bucket: a burst of one minute's quota, the quota per minute sustained). Admission
*reserves* the request's worst case, prompt tokens + max_new_tokens (`reservation`); release
*settles* to what it used, prompt + completion tokens, and refunds the rest (`refund`), never
charging more than was reserved. A request whose reservation exceeds the whole quota can never
be admitted: RESOURCE_EXHAUSTED without RetryInfo; a bucket that holds too little for it:
RESOURCE_EXHAUSTED with RetryInfo = the time the bucket needs to refill that much.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from autoglm.server.errors import ResourceExhausted

__all__ = [
    "Admission",
    "AdmissionControl",
    "AdmissionSnapshot",
    "EffectiveLimits",
    "LimitSettings",
    "PrincipalLimits",
    "Ticket",
    "refund",
    "reservation",
    "scaled",
]

_LIMIT_NAMES = ("max_streams", "requests_per_minute", "tokens_per_minute", "max_tokens_per_request")

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
    # Per principal: prompt + completion tokens per minute (reserved at admission, settled at
    # release; see the module docstring). The default is far above what one principal's 16
    # default streams generate on a GPU (16 x ~100 tokens/s = 96k per minute) plus their
    # prompts, so only a configured quota bites.
    tokens_per_minute: int = 1_000_000

    def __post_init__(self) -> None:
        for name in (
            "max_in_flight",
            "max_streams_per_principal",
            "requests_per_minute",
            "max_tokens_per_request",
            "tokens_per_minute",
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
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in _LIMIT_NAMES:
            _positive(name, getattr(self, name))

    def to_json(self) -> dict[str, int]:
        """Only the overrides that are set, for the token file."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PrincipalLimits | None:
        if not data:
            return None
        unknown = set(data) - set(_LIMIT_NAMES)
        if unknown:
            raise ValueError(f"unknown limits: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits that applied to one admitted request."""

    max_streams: int
    requests_per_minute: int
    max_tokens_per_request: int
    tokens_per_minute: int = LimitSettings.tokens_per_minute


def scaled(limits: EffectiveLimits, share: int) -> EffectiveLimits:
    """One process's share of a principal's quota when the books cannot be shared: concurrency,
    requests and tokens per minute divided by `share` (the number of façade processes), rounded
    down but at least 1 (so with more processes than quota the sum can exceed it: documented).
    The per-request ceiling is not a quota and stays whole."""
    if share <= 1:
        return limits
    return EffectiveLimits(
        max_streams=max(1, limits.max_streams // share),
        requests_per_minute=max(1, limits.requests_per_minute // share),
        max_tokens_per_request=limits.max_tokens_per_request,
        tokens_per_minute=max(1, limits.tokens_per_minute // share),
    )


def reservation(prompt_tokens: int, max_new_tokens: int) -> int:
    """Tokens a request reserves of its principal's tokens-per-minute quota at admission: its
    worst case, the prompt plus every token it may generate."""
    if prompt_tokens < 0 or max_new_tokens < 0:
        raise ValueError("token counts must not be negative")
    return prompt_tokens + max_new_tokens


def refund(reserved: int, used_tokens: int | None) -> int:
    """Tokens given back at release: the reservation minus what the request used (prompt +
    completion tokens), never negative (a request is never charged more than it reserved);
    `used_tokens` None = unknown, nothing is refunded."""
    if used_tokens is None:
        return 0
    return max(0, reserved - max(0, used_tokens))


def check_per_request(eff: EffectiveLimits, requested_tokens: int, reserved: int) -> None:
    """The refusals no waiting can cure (no RetryInfo): the same in every backend."""
    if requested_tokens > eff.max_tokens_per_request:
        raise ResourceExhausted(
            f"sampling.max_tokens {requested_tokens} exceeds this principal's limit of "
            f"{eff.max_tokens_per_request} tokens per request",
            limit="max_tokens",
        )
    if reserved > eff.tokens_per_minute:
        raise ResourceExhausted(
            f"tokens per minute: this request reserves {reserved} tokens (prompt +"
            f" sampling.max_tokens), more than this principal's whole quota of"
            f" {eff.tokens_per_minute} tokens per minute",
            limit="tokens_per_minute",
        )


def tpm_refusal(eff: EffectiveLimits, reserved: int, wait_s: float) -> ResourceExhausted:
    return ResourceExhausted(
        f"tokens per minute: quota of {eff.tokens_per_minute} tokens per minute per principal"
        f" reached (this request reserves {reserved})",
        retry_after_s=round_up_ms(wait_s),
        limit="tokens_per_minute",
    )


def rate_refusal(eff: EffectiveLimits, wait_s: float) -> ResourceExhausted:
    return ResourceExhausted(
        f"rate limit: {eff.requests_per_minute} requests per minute per principal",
        retry_after_s=round_up_ms(wait_s),
        limit="rate",
    )


def concurrency_refusal(eff: EffectiveLimits) -> ResourceExhausted:
    return ResourceExhausted(
        f"too many concurrent requests: limit {eff.max_streams} per principal",
        retry_after_s=CONCURRENCY_RETRY_AFTER_S,
        limit="principal_concurrency",
    )


def global_refusal(max_in_flight: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"server busy: {max_in_flight} requests in flight (global limit)",
        retry_after_s=CONCURRENCY_RETRY_AFTER_S,
        limit="global_concurrency",
    )


@dataclass(frozen=True)
class AdmissionSnapshot:
    in_flight: int
    per_principal: Mapping[str, int]  # principals with at least one request in flight
    tracked_principals: int  # rate buckets held in memory


class _Bucket:
    """Token bucket: capacity = the per-minute quota (the burst), refilled at quota/60 per
    second. Used for requests per minute (cost 1) and tokens per minute (cost = reservation)."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.updated = now

    def refill(self, per_minute: int, now: float) -> None:
        # The principal's quota may change while the bucket lives (token record edited).
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        elapsed = max(0.0, now - self.updated)  # a clock going backwards must not drain it
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are available (0 if they are)."""
        return max(0.0, (cost - self.tokens) / self.rate)


class Ticket:
    """An admitted request's slots. Release exactly once: use it as a (sync or async) context
    manager, or call `release` in a `finally`, right after `admit` with no await in between, so
    cancellation cannot leak it. `release` is synchronous in every backend (a remote backend
    schedules its own I/O), so a cancelled task still releases."""

    __slots__ = ("_on_release", "_released", "limits", "principal_key", "reserved_tokens")

    def __init__(
        self,
        on_release: Callable[[Ticket, int | None], None],
        principal_key: str,
        limits: EffectiveLimits,
        reserved_tokens: int = 0,
    ) -> None:
        self._on_release = on_release
        self._released = False
        self.principal_key = principal_key
        self.limits = limits
        self.reserved_tokens = reserved_tokens  # of the tokens-per-minute quota

    @property
    def released(self) -> bool:
        return self._released

    def release(self, used_tokens: int | None = None) -> None:
        """Frees the slots and refunds the reserved tokens not used (prompt + completion tokens
        = `used_tokens`; None = unknown, no refund); later calls do nothing."""
        if not self._released:
            self._released = True
            self._on_release(self, used_tokens)

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


class AdmissionControl(Protocol):
    """What a generation awaits before it reaches the engine: this module's `Admission` (books in
    this process) and shared_limits.py's `SharedAdmission` (books in Redis) both are one."""

    backend: str  # "local" | "redis": where the per-principal books are kept

    async def admit(
        self,
        principal_key: str,
        limits: PrincipalLimits | None,
        requested_tokens: int,
        prompt_tokens: int = 0,
    ) -> Ticket:
        """A Ticket, or ResourceExhausted (a limit) / a ServiceError (the books unreachable)."""
        ...

    async def close(self) -> None:
        """Finish pending releases and drop connections (at shutdown)."""
        ...


class Admission:
    """Admits or refuses requests with books in this process; see the module docstring.

    `share` > 1 gives each principal 1/share of its quota (`scaled`): the fallback of a process
    that is one of `share` façade processes and has lost the shared books."""

    backend = "local"

    def __init__(
        self,
        settings: LimitSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        share: int = 1,
    ) -> None:
        _positive("share", share)
        self._settings = settings
        self._clock = clock
        self._share = share
        self._in_flight = 0
        self._per_principal: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._token_buckets: dict[str, _Bucket] = {}
        self._swept_at = clock()

    @property
    def settings(self) -> LimitSettings:
        return self._settings

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def effective(self, limits: PrincipalLimits | None) -> EffectiveLimits:
        """The principal's whole quota (the token record's overrides over the defaults)."""
        s = self._settings
        o = limits or PrincipalLimits()
        return EffectiveLimits(
            max_streams=o.max_streams or s.max_streams_per_principal,
            requests_per_minute=o.requests_per_minute or s.requests_per_minute,
            max_tokens_per_request=o.max_tokens_per_request or s.max_tokens_per_request,
            tokens_per_minute=o.tokens_per_minute or s.tokens_per_minute,
        )

    async def admit(
        self,
        principal_key: str,
        limits: PrincipalLimits | None,
        requested_tokens: int,
        prompt_tokens: int = 0,
    ) -> Ticket:
        """`admit_now` behind the `AdmissionControl` interface (never suspends)."""
        return self.admit_now(principal_key, limits, requested_tokens, prompt_tokens)

    async def close(self) -> None:
        return None

    def admit_now(
        self,
        principal_key: str,
        limits: PrincipalLimits | None,
        requested_tokens: int,
        prompt_tokens: int = 0,
    ) -> Ticket:
        """A Ticket holding one global and one per-principal slot, one request of the
        requests-per-minute bucket and `prompt_tokens + requested_tokens` of the tokens-per-
        minute bucket; or ResourceExhausted.

        Checks run cheapest-and-permanent first; a refusal changes no state (a refused request
        does not spend a rate token).
        """
        if requested_tokens < 0:
            raise ValueError("requested_tokens must not be negative")
        reserved = reservation(prompt_tokens, requested_tokens)
        now = self._clock()
        self._maybe_sweep(now)
        whole = self.effective(limits)
        eff = scaled(whole, self._share)
        check_per_request(whole, requested_tokens, reserved)
        if reserved > eff.tokens_per_minute:
            # Fits the whole quota but not this process's share of it: a wait will not help here.
            check_per_request(eff, requested_tokens, reserved)
        if self._in_flight >= self._settings.max_in_flight:
            raise global_refusal(self._settings.max_in_flight)
        if self._per_principal.get(principal_key, 0) >= eff.max_streams:
            raise concurrency_refusal(eff)
        bucket = self._bucket(self._buckets, principal_key, eff.requests_per_minute, now)
        if bucket.tokens < 1.0:
            raise rate_refusal(eff, bucket.wait_s())
        tokens = self._bucket(self._token_buckets, principal_key, eff.tokens_per_minute, now)
        if tokens.tokens < reserved:
            raise tpm_refusal(eff, reserved, tokens.wait_s(reserved))
        bucket.tokens -= 1.0
        tokens.tokens -= reserved
        self._in_flight += 1
        self._per_principal[principal_key] = self._per_principal.get(principal_key, 0) + 1
        return Ticket(self._release, principal_key, eff, reserved)

    def snapshot(self) -> AdmissionSnapshot:
        return AdmissionSnapshot(
            in_flight=self._in_flight,
            per_principal=dict(self._per_principal),
            tracked_principals=len(self._buckets.keys() | self._token_buckets.keys()),
        )

    def sweep(self) -> None:
        """Forgets principals with nothing in flight and full buckets (they behave as new)."""
        now = self._clock()
        self._swept_at = now
        for buckets in (self._buckets, self._token_buckets):
            for key in list(buckets):
                bucket = buckets[key]
                bucket.refill(int(bucket.capacity), now)
                if bucket.tokens >= bucket.capacity and key not in self._per_principal:
                    del buckets[key]

    def _maybe_sweep(self, now: float) -> None:
        # Keys are token ids or principal names: bounded by the token store, but a long-running
        # server sees many over time. An amortised sweep keeps memory in line with the active set.
        if now - self._swept_at >= _SWEEP_INTERVAL_S:
            self.sweep()

    @staticmethod
    def _bucket(buckets: dict[str, _Bucket], key: str, per_minute: int, now: float) -> _Bucket:
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(per_minute, now)
        else:
            bucket.refill(per_minute, now)
        return bucket

    def _release(self, ticket: Ticket, used_tokens: int | None) -> None:
        key = ticket.principal_key
        self._in_flight -= 1
        remaining = self._per_principal[key] - 1
        if remaining:
            self._per_principal[key] = remaining
        else:
            del self._per_principal[key]
        back = refund(ticket.reserved_tokens, used_tokens)
        bucket = self._token_buckets.get(key)
        if back and bucket is not None:
            bucket.refill(ticket.limits.tokens_per_minute, self._clock())
            bucket.tokens = min(bucket.capacity, bucket.tokens + back)


def round_up_ms(seconds: float) -> float:
    # Rounded up: a client that waits exactly retry_after_s must then succeed.
    # The epsilon absorbs float noise (0.1 s must not become 0.101 s).
    return math.ceil(seconds * 1000.0 - 1e-6) / 1000.0
