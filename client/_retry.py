"""Retry policy and the pure retry decisions, shared by `Client` and `AsyncClient`.

What is retried, and why only that:

* UNAVAILABLE: the contract says the engine "cannot be reached or is not ready; safe to retry
  when no response message has been received yet" (proto/autoglm/v1/text_generation.proto).
  A channel that cannot connect (server restarting, port not yet open) fails the same way.
* RESOURCE_EXHAUSTED, only if the policy opts in (`retry_resource_exhausted`), only when the
  server sent `google.rpc.RetryInfo` (concurrency and rate limits do; a too-long prompt does
  not, and would fail again) and only when the delay it asks for is at most `max_backoff`: a
  longer wait is the caller's decision, so the error (with its `retry_after`) is raised at
  once. The pause is then at least that delay. Off by default: a refusal is the server's
  back-pressure, and a caller may rather shed the work than have the client wait for it.
* Nothing else: INTERNAL may have generated (and billed) tokens, DEADLINE_EXCEEDED and
  CANCELLED mean the caller's budget or wish, the rest are permanent.

A stream is retried only while no response message has been received: after that, a retry
would send tokens again. The pause before retry n (n = 1, 2, ...) is "full jitter" (AWS
Architecture Blog, "Exponential Backoff And Jitter", the same as gRPC's retry design A6):
uniform in [0, min(max_backoff, initial_backoff * multiplier**(n-1))]. The caller's timeout
is the budget of the whole call: each attempt gets what is left of it, and no retry starts
whose pause would end past it.

No I/O and no sleeping here: the clients sleep, `Attempts` only decides, with an injectable
clock and random source so that it is tested without waiting.
"""

from __future__ import annotations

import math
import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from autoglm.client._exceptions import AutoGLMError, ConfigError

__all__ = ["Attempts", "RetryPolicy", "backoff_cap", "is_retryable"]


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried after UNAVAILABLE (and, if asked, RESOURCE_EXHAUSTED with RetryInfo).

    max_attempts: attempts per call, the first included; 1 turns retrying off.
    initial_backoff: upper bound of the first pause, in seconds.
    max_backoff: upper bound of any pause, and the longest server RetryInfo delay honoured.
    multiplier: growth of the bound from one retry to the next.
    retry_resource_exhausted: also retry RESOURCE_EXHAUSTED that carries RetryInfo, after the
        delay it asks for (at most max_backoff).
    """

    max_attempts: int = 3
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retry_resource_exhausted: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigError(f"retry.max_attempts must be an integer, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ConfigError(
                f"retry.max_attempts must be at least 1 (1 = no retries), got {self.max_attempts}"
            )
        for name in ("initial_backoff", "max_backoff", "multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"retry.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"retry.{name} must be a positive finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.max_backoff < self.initial_backoff:
            raise ConfigError(
                f"retry.max_backoff ({self.max_backoff:g}) must be at least "
                f"retry.initial_backoff ({self.initial_backoff:g})"
            )
        if self.multiplier < 1:
            raise ConfigError(f"retry.multiplier must be at least 1, got {self.multiplier:g}")
        if not isinstance(self.retry_resource_exhausted, bool):
            raise ConfigError(
                f"retry.retry_resource_exhausted must be true or false, "
                f"got {self.retry_resource_exhausted!r}"
            )


def backoff_cap(policy: RetryPolicy, retry: int) -> float:
    """Upper bound of the pause before retry number `retry` (1 = the first retry)."""
    # The exponent is capped so that a large max_attempts cannot overflow the float.
    exponent = min(retry - 1, 1024)
    try:
        bound = policy.initial_backoff * policy.multiplier**exponent
    except OverflowError:
        return policy.max_backoff
    return min(policy.max_backoff, bound)


def is_retryable(error: AutoGLMError, policy: RetryPolicy) -> bool:
    """Whether a failed attempt may be repeated, as far as its status says (see module doc)."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return error.retry_after is None or error.retry_after <= policy.max_backoff
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and policy.retry_resource_exhausted:
        return error.retry_after is not None and error.retry_after <= policy.max_backoff
    return False


class Attempts:
    """The attempts of one logical call: how long each may take, and whether to retry.

    `timeout` is the caller's (None = no deadline). Use: `attempt_timeout()` for each attempt's
    gRPC timeout; after a failure, `next_delay(error, received=...)` gives the pause before the
    next attempt, or None when the error must be raised (and then sets `error.attempts`).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.policy = policy
        self.number = 1  # the attempt being made (1-based)
        self._timeout = timeout
        self._clock = clock
        self._random = random
        self._deadline = None if timeout is None else clock() + timeout

    def attempt_timeout(self) -> float | None:
        """The gRPC timeout of the current attempt: what is left of the caller's timeout."""
        if self._deadline is None or self.number == 1:
            return self._timeout  # exactly the caller's value on the first attempt
        return max(0.0, self._deadline - self._clock())

    def next_delay(self, error: AutoGLMError, *, received: bool = False) -> float | None:
        """Seconds to pause before the next attempt, or None to raise `error` now.

        `received`: a response message already arrived (streams), so retrying could
        duplicate output: never retry then.
        """
        delay = self._decide(error, received)
        if delay is None:
            error.attempts = self.number
        else:
            self.number += 1
        return delay

    def _decide(self, error: AutoGLMError, received: bool) -> float | None:
        if received or self.number >= self.policy.max_attempts:
            return None
        if not is_retryable(error, self.policy):
            return None
        delay = self._random() * backoff_cap(self.policy, self.number)
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)  # the server's word is a minimum
        if self._deadline is not None and self._clock() + delay >= self._deadline:
            return None  # the next attempt could not start before the caller's deadline
        return delay
