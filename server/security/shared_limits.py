"""One set of books for every façade process and pod: the per-principal limits kept in Redis.

What is shared (per principal, across every process that names the same Redis and key prefix):
concurrency (`max_streams`), requests per minute and tokens per minute. The decisions are
limits.py's, taken inside Redis by one Lua script per admission and one per release, so no
two processes can both take the last slot. What stays per process: the global `max_in_flight`
(it protects this process's event loop and memory, not a tenant's quota) and the per-request
`max_tokens` ceiling (pure arithmetic, nothing to share).

Keys (a hash tag per principal keeps both keys of one principal in one Redis Cluster slot, so a
script may touch both; the tag is a digest, so identities — e-mail addresses, OIDC subjects —
are not written into key names):
    <prefix>{<sha256(principal)[:16]>}:leases   sorted set: lease id -> expiry (Redis time, s)
    <prefix>{<sha256(principal)[:16]>}:buckets  hash: requests, tokens, at (Redis time, s)

Concurrency slots are *leases* with an expiry: a process that dies (SIGKILL, OOM, a node lost)
cannot release its slots, so each lease expires `lease_ttl_s` after it was last renewed, and
every admission first drops the expired ones. A live process renews all its leases every
lease_ttl_s / 3 in one script call per principal, so a long stream keeps its slot however long
it runs; a crashed holder's slots come back within lease_ttl_s. Renewal never resurrects a lease
that has already expired (its slot may have been given to someone else since).

Time is Redis's (`TIME` inside the scripts), never a façade's clock: several hosts' clocks
disagree, the store's is one. Every key carries a TTL: the leases key the lease TTL (refreshed
with each write), the buckets key 61 s (a bucket refills completely within 60 s, after which a
missing bucket and a full one are the same), so idle principals vanish by themselves.

Redis unreachable (connection refused, timeout, an error reply): `fallback` decides.
    closed (default)  calls are refused with UNAVAILABLE "limits store unreachable": the quota is
                      a control the operator relies on, and UNAVAILABLE is the code for a
                      dependency that is down (clients retry it with backoff) where
                      RESOURCE_EXHAUSTED would blame the caller's quota.
    local             this process admits on its local share of each quota (limits.py
                      `Admission(share=workers x replicas)`): concurrency, requests and tokens
                      per minute divided by the number of façade processes.
The switch is logged once per transition (a warning naming the backend and the reason), the
gauge `autoglm_limits_backend{backend}` shows the books in use and
`autoglm_limits_store_errors_total{operation}` counts the store's failures. A background probe
PINGs Redis every `probe_interval_s` while it is unreachable and switches back when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2
from redis import asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from autoglm.server.errors import ServiceError
from autoglm.server.security.limits import (
    CONCURRENCY_RETRY_AFTER_S,
    Admission,
    EffectiveLimits,
    LimitSettings,
    PrincipalLimits,
    Ticket,
    check_per_request,
    concurrency_refusal,
    global_refusal,
    rate_refusal,
    refund,
    reservation,
    tpm_refusal,
)

__all__ = [
    "FALLBACKS",
    "LimitsUnavailable",
    "SharedAdmission",
    "SharedLimitSettings",
    "principal_keys",
]

log = logging.getLogger("autoglm.server.limits")

FALLBACKS = ("closed", "local")
BACKENDS = ("redis", "local", "closed")  # the gauge's label values
# A bucket refills from empty to full in 60 s; a second more covers rounding.
BUCKET_TTL_MS = 61_000
# Redis's failures as the client reports them, and the socket's own.
STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# --- The scripts (Lua 5.1 in Redis >= 5: TIME before a write needs effects replication, the
# default since 5.0). Numbers are written with %.17g: Lua's own tostring keeps 14 digits, which
# would round Redis time (10 digits of seconds + 6 of microseconds).

ADMIT_LUA = """
-- KEYS[1] leases (zset: lease id -> expiry), KEYS[2] buckets (hash: requests, tokens, at)
-- ARGV: lease id, max_streams, requests per minute, tokens per minute, tokens reserved,
--       lease ttl (ms), bucket ttl (ms)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return {'principal_concurrency', '0'}
end
local b = redis.call('HMGET', KEYS[2], 'requests', 'tokens', 'at')
local elapsed = 0
if b[3] then elapsed = math.max(0, now - tonumber(b[3])) end
local requests = rpm
if b[1] then requests = math.min(rpm, tonumber(b[1]) + elapsed * rpm / 60) end
local tokens = tpm
if b[2] then tokens = math.min(tpm, tonumber(b[2]) + elapsed * tpm / 60) end
if requests < 1 then
  return {'rate', string.format('%.17g', (1 - requests) * 60 / rpm)}
end
if tokens < cost then
  return {'tokens_per_minute', string.format('%.17g', (cost - tokens) * 60 / tpm)}
end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + tonumber(ARGV[6]) / 1000), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('HSET', KEYS[2], 'requests', string.format('%.17g', requests - 1),
  'tokens', string.format('%.17g', tokens - cost), 'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return {'ok', '0'}
"""

RELEASE_LUA = """
-- KEYS[1] leases, KEYS[2] buckets
-- ARGV: lease id, requests per minute, tokens per minute, tokens refunded, bucket ttl (ms)
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
local back = tonumber(ARGV[4])
if back > 0 then
  local b = redis.call('HMGET', KEYS[2], 'requests', 'tokens', 'at')
  -- No bucket: it expired full (or never was); nothing to give back.
  if b[1] and b[2] and b[3] then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    local rpm = tonumber(ARGV[2])
    local tpm = tonumber(ARGV[3])
    local elapsed = math.max(0, now - tonumber(b[3]))
    local requests = math.min(rpm, tonumber(b[1]) + elapsed * rpm / 60)
    local tokens = math.min(tpm, tonumber(b[2]) + elapsed * tpm / 60 + back)
    redis.call('HSET', KEYS[2], 'requests', string.format('%.17g', requests),
      'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
  end
end
return removed
"""

RENEW_LUA = """
-- KEYS[1] leases; ARGV[1] lease ttl (ms), ARGV[2..] the lease ids this process holds
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local expiry = string.format('%.17g', now + tonumber(ARGV[1]) / 1000)
local kept = 0
for i = 2, #ARGV do
  -- Only leases still held: an expired one's slot may belong to someone else by now.
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
    kept = kept + 1
  end
end
if kept > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return kept
"""


class LimitsUnavailable(ServiceError):
    """The shared books cannot be reached and the fallback is `closed`: UNAVAILABLE (retryable),
    with RetryInfo, since the store usually comes back."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_s * 1e9))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return [packed]


@dataclass(frozen=True)
class SharedLimitSettings:
    """Where the shared books are and what to do without them."""

    # redis://host:port/db, rediss://… (TLS; a private CA as ?ssl_ca_certs=/path), unix:///path
    redis_url: str
    fallback: str = "closed"  # FALLBACKS
    key_prefix: str = "autoglm:limits:"
    # Façade pods (or hosts) sharing these books; with `workers` per pod, a process's local
    # share of a quota in the `local` fallback is 1 / (replicas x workers).
    replicas: int = 1
    # A crashed holder's slot comes back within this; live holders renew every third of it.
    lease_ttl_s: float = 30.0
    timeout_s: float = 0.5  # per Redis call (connect, then reply)
    password_file: Path | None = None  # the password, never in the URL (URLs are shown)
    probe_interval_s: float = 1.0  # PING while unreachable

    def validate(self) -> None:
        """ValueError naming the setting (settings.py turns it into a SettingsError)."""
        parts = urlsplit(self.redis_url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"limits_redis: {self.redis_url!r} is not a redis://, rediss:// or unix:// URL"
            )
        if parts.password:
            raise ValueError(
                "limits_redis: put the password in --limits-redis-password-file, not in the URL"
                " (the URL is shown by --print-config and in logs)"
            )
        if self.fallback not in FALLBACKS:
            raise ValueError(
                f"limits_redis_fallback: must be one of {', '.join(FALLBACKS)},"
                f" got {self.fallback!r}"
            )
        if not self.key_prefix or any(c in self.key_prefix for c in "{} \r\n"):
            raise ValueError(
                f"limits_redis_prefix: must be non-empty without braces or spaces (braces"
                f" would move the Cluster hash tag), got {self.key_prefix!r}"
            )
        if self.replicas < 1:
            raise ValueError(f"limits_replicas: must be >= 1, got {self.replicas}")
        for name, value in (
            ("limits_lease_ttl", self.lease_ttl_s),
            ("limits_redis_timeout", self.timeout_s),
            ("probe_interval_s", self.probe_interval_s),
        ):
            if not value > 0:
                raise ValueError(f"{name}: must be > 0, got {value}")
        if self.lease_ttl_s < 3 * self.timeout_s:
            raise ValueError(
                f"limits_lease_ttl: {self.lease_ttl_s} s leaves no room to renew leases every"
                f" third of it with a {self.timeout_s} s Redis timeout"
            )
        if self.password_file is not None and not self.password_file.is_file():
            raise ValueError(f"limits_redis_password_file: {self.password_file} does not exist")


def principal_keys(prefix: str, principal_key: str) -> tuple[str, str]:
    """The leases and buckets keys of one principal (same Cluster slot: one hash tag)."""
    tag = hashlib.sha256(principal_key.encode()).hexdigest()[:16]
    return f"{prefix}{{{tag}}}:leases", f"{prefix}{{{tag}}}:buckets"


def redis_client(settings: SharedLimitSettings) -> aioredis.Redis:
    """A client that fails fast: no retries (the fallback decides), short timeouts, a bounded
    pool (a burst of admissions waits for a connection instead of opening hundreds). Waiting for
    a pooled connection is not the store failing: that wait is bounded by ten call timeouts, so
    that a burst queued behind 32 busy connections is not taken for an outage."""
    password = None
    if settings.password_file is not None:
        password = settings.password_file.read_text().strip()
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=32,
        timeout=10 * settings.timeout_s,
        socket_timeout=settings.timeout_s,
        socket_connect_timeout=settings.timeout_s,
        retry=Retry(NoBackoff(), 0),
        password=password,
        client_name="autoglm-limits",
        driver_info=None,  # no CLIENT SETINFO round trips on connect
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose closes both


class _Lease(Ticket):
    __slots__ = ("lease_id",)


class SharedAdmission:
    """`AdmissionControl` with the per-principal books in Redis (see the module docstring).

    `share` is the number of façade processes (workers x replicas): the divisor of each quota
    when the `local` fallback admits without the shared books."""

    def __init__(
        self,
        limits: LimitSettings,
        shared: SharedLimitSettings,
        *,
        share: int = 1,
        client: aioredis.Redis | None = None,
        on_backend: Callable[[str], None] | None = None,
        on_store_error: Callable[[str], None] | None = None,
    ) -> None:
        self._limits = limits
        self._shared = shared
        self._quotas = Admission(limits)  # effective() only: the whole quota of a principal
        self._local = Admission(limits, share=share)  # the fallback's books
        self._redis = client if client is not None else redis_client(shared)
        self._admit_script = self._redis.register_script(ADMIT_LUA)
        self._release_script = self._redis.register_script(RELEASE_LUA)
        self._renew_script = self._redis.register_script(RENEW_LUA)
        self._on_backend = on_backend or (lambda backend: None)
        self._on_store_error = on_store_error or (lambda operation: None)
        self._lease_ttl_ms = max(1, round(shared.lease_ttl_s * 1000))
        self._in_flight = 0  # admitted through Redis, in this process
        self._held: dict[str, set[str]] = {}  # principal key -> lease ids held here
        self._tasks: set[asyncio.Task[object]] = set()  # releases in flight: kept referenced
        self._renewer: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._state = "redis"
        self._on_backend(self._state)

    @property
    def backend(self) -> str:
        """Where the per-principal books are now: "redis", "local" (fallback) or "closed"."""
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight + self._local.in_flight

    def held(self, principal_key: str) -> int:
        """Leases this process holds for the principal (tests, debugging)."""
        return len(self._held.get(principal_key, ()))

    # --- admission ----------------------------------------------------------------------------

    async def admit(
        self,
        principal_key: str,
        limits: PrincipalLimits | None,
        requested_tokens: int,
        prompt_tokens: int = 0,
    ) -> Ticket:
        if requested_tokens < 0:
            raise ValueError("requested_tokens must not be negative")
        reserved = reservation(prompt_tokens, requested_tokens)
        eff = self._quotas.effective(limits)
        check_per_request(eff, requested_tokens, reserved)
        if self.in_flight >= self._limits.max_in_flight:
            raise global_refusal(self._limits.max_in_flight)
        if self._state != "redis":
            return self._without_store(principal_key, limits, requested_tokens, prompt_tokens)
        self._in_flight += 1  # the global slot is held across the await
        lease_id = secrets.token_hex(8)
        leases, buckets = principal_keys(self._shared.key_prefix, principal_key)
        args = [
            lease_id,
            eff.max_streams,
            eff.requests_per_minute,
            eff.tokens_per_minute,
            reserved,
            self._lease_ttl_ms,
            BUCKET_TTL_MS,
        ]
        call = asyncio.ensure_future(self._admit_script(keys=[leases, buckets], args=args))
        try:
            # Shielded: a caller cancelled mid-call must not leave a lease nobody holds.
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            self._in_flight -= 1
            self._keep(call)
            call.add_done_callback(
                lambda done: self._undo(done, principal_key, lease_id, eff, reserved)
            )
            raise
        except STORE_ERRORS as exc:
            self._in_flight -= 1
            self._store_failed("admit", exc)
            return self._without_store(principal_key, limits, requested_tokens, prompt_tokens)
        except BaseException:
            self._in_flight -= 1
            raise
        verdict, wait = (_text(item) for item in reply)
        if verdict != "ok":
            self._in_flight -= 1
            raise _refusal(verdict, eff, reserved, float(wait))
        self._held.setdefault(principal_key, set()).add(lease_id)
        self._start_renewer()
        ticket = _Lease(self._release, principal_key, eff, reserved)
        ticket.lease_id = lease_id
        return ticket

    def _without_store(
        self,
        principal_key: str,
        limits: PrincipalLimits | None,
        requested_tokens: int,
        prompt_tokens: int,
    ) -> Ticket:
        if self._shared.fallback == "local":
            return self._local.admit_now(principal_key, limits, requested_tokens, prompt_tokens)
        raise LimitsUnavailable(
            "limits store unreachable: calls are refused until it is back (fail closed)",
            retry_after_s=max(CONCURRENCY_RETRY_AFTER_S, self._shared.probe_interval_s),
        )

    # --- release ------------------------------------------------------------------------------

    def _release(self, ticket: Ticket, used_tokens: int | None) -> None:
        """Synchronous (a `finally` of a cancelled task runs it to the end): the local counts
        drop now, the Redis script runs in a task this object keeps until it is done."""
        assert isinstance(ticket, _Lease)
        self._in_flight -= 1
        self._drop_held(ticket.principal_key, ticket.lease_id)
        back = refund(ticket.reserved_tokens, used_tokens)
        key, lease_id = ticket.principal_key, ticket.lease_id
        self._spawn(self._release_remote(key, lease_id, ticket.limits, back))

    def _undo(
        self,
        call: asyncio.Future[object],
        principal_key: str,
        lease_id: str,
        eff: EffectiveLimits,
        reserved: int,
    ) -> None:
        """The admit script of a cancelled caller finished: give back what it took, if any."""
        if call.cancelled() or call.exception() is not None:
            return
        if _text(call.result()[0]) == "ok":  # type: ignore[index]
            self._spawn(self._release_remote(principal_key, lease_id, eff, reserved))

    async def _release_remote(
        self, principal_key: str, lease_id: str, eff: EffectiveLimits, back: int
    ) -> None:
        leases, buckets = principal_keys(self._shared.key_prefix, principal_key)
        args = [lease_id, eff.requests_per_minute, eff.tokens_per_minute, back, BUCKET_TTL_MS]
        try:
            await self._release_script(keys=[leases, buckets], args=args)
        except STORE_ERRORS as exc:
            # The lease expires by itself within lease_ttl_s; the refund is lost (conservative).
            self._store_failed("release", exc)

    # --- renewal, probe, state ----------------------------------------------------------------

    async def renew(self) -> int:
        """Renew every lease this process holds; returns how many Redis still had."""
        kept = 0
        for principal_key, leases in list(self._held.items()):
            ids = sorted(leases)
            if not ids:
                continue
            key, _ = principal_keys(self._shared.key_prefix, principal_key)
            n = int(await self._renew_script(keys=[key], args=[self._lease_ttl_ms, *ids]))
            if n < len(ids):
                log.warning(
                    "limits: %d of %d leases had expired before renewal (this process stalled"
                    " for more than the lease TTL of %.1f s, or Redis lost them); the principal"
                    " may briefly hold more than its concurrency quota",
                    len(ids) - n,
                    len(ids),
                    self._shared.lease_ttl_s,
                )
            kept += n
        return kept

    async def _renew_forever(self) -> None:
        interval = self._shared.lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            if self._state != "redis" or not self._held:
                continue
            try:
                await self.renew()
            except STORE_ERRORS as exc:
                self._store_failed("renew", exc)

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self._shared.probe_interval_s)
            try:
                await self._redis.ping()
            except STORE_ERRORS:
                self._on_store_error("probe")
                continue
            # Idle connections of before the outage are dropped, so that the next admissions
            # do not meet a dead socket first and flap back.
            await self._redis.connection_pool.disconnect(inuse_connections=False)
            self._switch("redis", "limits store reachable again")
            return

    def _store_failed(self, operation: str, exc: BaseException) -> None:
        self._on_store_error(operation)
        backend = "local" if self._shared.fallback == "local" else "closed"
        self._switch(
            backend, f"limits store unreachable ({operation}: {type(exc).__name__}: {exc})"
        )

    def _switch(self, state: str, reason: str) -> None:
        if state == self._state:
            return
        self._state = state
        self._on_backend(state)
        books = {
            "redis": "per-principal limits kept in Redis again (one set of books)",
            "local": "admitting on this process's local share of each quota",
            "closed": "refusing calls (fail closed) until it is back",
        }[state]
        log.warning("limits backend %s: %s; %s", state, reason, books)
        if state != "redis" and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    def _drop_held(self, principal_key: str, lease_id: str) -> None:
        leases = self._held.get(principal_key)
        if leases is not None:
            leases.discard(lease_id)
            if not leases:
                del self._held[principal_key]

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._keep(task)

    def _keep(self, task: asyncio.Future[object]) -> None:
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Wait for the releases scheduled so far (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in (self._renewer, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._shared.timeout_s * 4):
                await self.drain()
        await self._redis.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _refusal(verdict: str, eff: EffectiveLimits, reserved: int, wait_s: float) -> ServiceError:
    if verdict == "principal_concurrency":
        return concurrency_refusal(eff)
    if verdict == "rate":
        return rate_refusal(eff, wait_s)
    if verdict == "tokens_per_minute":
        return tpm_refusal(eff, reserved, wait_s)
    raise RuntimeError(f"unexpected reply from the admit script: {verdict!r}")
