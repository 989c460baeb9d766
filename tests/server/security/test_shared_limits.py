"""The shared books (security/shared_limits.py) against a real redis-server (tests/support).

Each `SharedAdmission` here has its own Redis client, as each façade process has: several of
them on one key prefix are several processes sharing one principal's quota.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from redis import asyncio as aioredis

from autoglm.server.errors import ResourceExhausted, status_for
from autoglm.server.models import ModelSpec
from autoglm.server.security.limits import LimitSettings, PrincipalLimits
from autoglm.server.security.shared_limits import (
    LimitsUnavailable,
    SharedAdmission,
    SharedLimitSettings,
    principal_keys,
)
from autoglm.server.settings import Settings, SettingsError
from autoglm.server.telemetry.metrics import FacadeMetrics
from autoglm.server.workers import worker_settings
from tests.support.redis_server import RedisServer

_PREFIXES = itertools.count()
LIMITS = LimitSettings(
    max_in_flight=1000,
    max_streams_per_principal=3,
    requests_per_minute=1000,
    max_tokens_per_request=512,
    tokens_per_minute=100_000,
)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def shared(redis_server: RedisServer) -> SharedLimitSettings:
    # A prefix per test: the tests share one server and never see each other's keys. The
    # timeout is generous: a loaded CI machine took more than 0.2 s to open some of the 80
    # connections of the burst test, which then counted as the store failing. The tests of
    # the store failing set their own short timeouts.
    return SharedLimitSettings(
        redis_url=redis_server.url, key_prefix=f"test{next(_PREFIXES)}:", timeout_s=3.0
    )


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at the books the way an operator would."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


class Books:
    """Several façade processes' admissions on one set of books; closed at the end."""

    def __init__(self) -> None:
        self.made: list[SharedAdmission] = []

    def __call__(
        self, shared: SharedLimitSettings, limits: LimitSettings = LIMITS, **kw: object
    ) -> SharedAdmission:
        admission = SharedAdmission(limits, shared, **kw)  # type: ignore[arg-type]
        self.made.append(admission)
        return admission


@pytest.fixture
async def books() -> AsyncIterator[Books]:
    made = Books()
    yield made
    for admission in made.made:
        await admission.close()


async def _refused(admission: SharedAdmission, *args: object) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as info:
        await admission.admit("alice", *args)  # type: ignore[arg-type]
    return info.value


async def _wait_for(condition, timeout_s: float = 10.0, step_s: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `condition()` (sync or async) is true; fails after `timeout_s`."""
    start = time.monotonic()
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout_s, "condition not reached in time"
        await asyncio.sleep(step_s)


async def test_concurrency_is_one_quota_across_processes(
    shared: SharedLimitSettings, books: Books, raw: aioredis.Redis
) -> None:
    a, b = books(shared), books(shared)
    first = await a.admit("alice", None, 16)
    await a.admit("alice", None, 16)
    await b.admit("alice", None, 16)
    for admission in (a, b):
        err = await _refused(admission, None, 16)
        assert err.limit == "principal_concurrency" and "limit 3 per principal" in err.message
    await b.admit("bob", None, 16)  # another principal has its own slots
    first.release()
    await a.drain()
    await b.admit("alice", None, 16)
    leases, _ = principal_keys(shared.key_prefix, "alice")
    assert await raw.zcard(leases) == 3


async def test_a_burst_from_many_processes_gets_exactly_the_quota(
    shared: SharedLimitSettings, books: Books
) -> None:
    processes = [books(shared) for _ in range(8)]
    attempts = [p.admit("alice", PrincipalLimits(max_streams=5), 16) for p in processes * 10]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    others = [r for r in results if isinstance(r, BaseException) and r not in refused]
    assert not others, f"{len(others)} attempts failed otherwise, e.g. {others[0]!r}"
    assert len(admitted) == 5 and len(refused) == 75


async def test_requests_per_minute_is_shared_and_refusals_spend_nothing(
    shared: SharedLimitSettings, books: Books
) -> None:
    a, b = books(shared), books(shared)
    rpm = PrincipalLimits(requests_per_minute=4, max_streams=100)
    for admission in (a, b, a, b):
        (await admission.admit("alice", rpm, 16)).release()
    err = await _refused(b, rpm, 16)
    assert err.limit == "rate" and "4 requests per minute" in err.message
    # The bucket refills 4 per 60 s: one request in 15 s, less the time since the first
    # admission (a few seconds allowed for a loaded machine).
    assert 10.0 < err.retry_after_s <= 15.0  # type: ignore[operator]
    assert status_for(err, request_id="r").code == grpc.StatusCode.RESOURCE_EXHAUSTED
    err2 = await _refused(a, rpm, 16)  # still refused, the refusal took no slot
    assert err2.retry_after_s <= err.retry_after_s  # type: ignore[operator]


async def test_tokens_per_minute_reserve_then_settle(
    shared: SharedLimitSettings, books: Books, raw: aioredis.Redis
) -> None:
    a, b = books(shared), books(shared)
    tpm = PrincipalLimits(tokens_per_minute=100, max_streams=100)
    first = await a.admit("alice", tpm, 50, 10)  # reserves 60
    err = await _refused(b, tpm, 50, 10)  # 40 left < 60
    assert err.limit == "tokens_per_minute"
    assert "100 tokens per minute" in err.message and "reserves 60" in err.message
    # 20 tokens missing at 100/60 per second: 12 s, less the time since the first admission.
    assert 8.0 < err.retry_after_s <= 12.0  # type: ignore[operator]
    first.release(used_tokens=15)  # prompt 10 + 5 generated: 45 refunded
    await a.drain()
    _, buckets = principal_keys(shared.key_prefix, "alice")
    assert 85.0 <= float(await raw.hget(buckets, "tokens")) < 92.0  # 100 - 15 (+ refill)
    await b.admit("alice", tpm, 50, 10)  # 85 left >= 60
    # More than the whole quota: never admissible, no RetryInfo.
    whole = await _refused(a, tpm, 95, 10)
    assert whole.limit == "tokens_per_minute" and whole.retry_after_s is None


async def test_a_release_without_usage_refunds_nothing(
    shared: SharedLimitSettings, books: Books, raw: aioredis.Redis
) -> None:
    a = books(shared)
    tpm = PrincipalLimits(tokens_per_minute=1000)
    (await a.admit("alice", tpm, 100, 100)).release()  # cancelled: used unknown
    await a.drain()
    _, buckets = principal_keys(shared.key_prefix, "alice")
    assert 800.0 <= float(await raw.hget(buckets, "tokens")) < 850.0  # 1000 - 200 (+ refill)


async def test_every_key_has_a_ttl(
    shared: SharedLimitSettings, books: Books, raw: aioredis.Redis
) -> None:
    a = books(shared)
    ticket = await a.admit("alice", None, 16)
    leases, buckets = principal_keys(shared.key_prefix, "alice")
    assert 0 < await raw.pttl(leases) <= shared.lease_ttl_s * 1000
    assert 0 < await raw.pttl(buckets) <= 61_000
    assert leases.startswith(shared.key_prefix + "{") and "alice" not in leases
    # One hash tag for both keys: Redis Cluster puts them in one slot.
    assert leases.split("}")[0] == buckets.split("}")[0]
    ticket.release(16)
    await a.drain()
    assert await raw.exists(leases) == 0  # an empty sorted set is deleted


async def test_a_cancelled_admission_leaves_no_lease(
    shared: SharedLimitSettings, books: Books, raw: aioredis.Redis
) -> None:
    a = books(shared)
    leases, _ = principal_keys(shared.key_prefix, "alice")
    for delay in range(4):  # cancelled before, while and after the script runs
        task = asyncio.create_task(a.admit("alice", None, 16))
        for _ in range(delay):
            await asyncio.sleep(0)
        task.cancel()
        try:
            ticket = await task
        except asyncio.CancelledError:
            pass
        else:
            ticket.release(16)
        await a.drain()
        assert await raw.zcard(leases) == 0
        assert a.held("alice") == 0 and a.in_flight == 0


async def test_a_cancelled_stream_still_releases(
    shared: SharedLimitSettings, books: Books, raw: aioredis.Redis
) -> None:
    a = books(shared)
    leases, _ = principal_keys(shared.key_prefix, "alice")
    admitted = asyncio.Event()

    async def stream() -> None:
        ticket = await a.admit("alice", None, 16)
        try:
            admitted.set()
            await asyncio.sleep(3600)  # a long generation
        finally:
            ticket.release(None)  # synchronous: runs to the end in a cancelled task

    task = asyncio.create_task(stream())
    await admitted.wait()
    assert await raw.zcard(leases) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await a.drain()
    assert await raw.zcard(leases) == 0


_HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from autoglm.server.security.limits import LimitSettings, PrincipalLimits
    from autoglm.server.security.shared_limits import SharedAdmission, SharedLimitSettings

    async def main() -> None:
        shared = SharedLimitSettings(
            redis_url=sys.argv[1], key_prefix=sys.argv[2], lease_ttl_s=float(sys.argv[3]),
            timeout_s=0.2,
        )
        admission = SharedAdmission(LimitSettings(), shared)
        await admission.admit("alice", PrincipalLimits(max_streams=1), 16)
        print("admitted", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_dead_holders_lease_expires_a_live_ones_does_not(
    shared: SharedLimitSettings, books: Books, tmp_path: Path
) -> None:
    ttl = 2.0  # renewed every 0.67 s: a loaded machine may delay a renewal, not by a TTL
    one = PrincipalLimits(max_streams=1)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, shared.redis_url, shared.key_prefix, str(ttl),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"admitted"
        b = books(shared)
        # The live holder renews every ttl/3: its slot stays taken for longer than a TTL.
        deadline = time.monotonic() + 2 * ttl
        while time.monotonic() < deadline:
            assert (await _refused(b, one, 16)).limit == "principal_concurrency"
            await asyncio.sleep(0.1)
        os.kill(holder.pid, signal.SIGKILL)  # dies holding its slot
        killed = time.monotonic()
        await holder.wait()

        async def admitted() -> bool:
            try:
                (await b.admit("alice", one, 16)).release(16)
            except ResourceExhausted:
                return False
            return True

        await _wait_for(admitted, timeout_s=5 * ttl)
        # Freed by expiry: not before the last renewal's TTL ran out.
        assert time.monotonic() - killed > ttl / 3
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_renewal_keeps_leases_and_never_resurrects_one(
    redis_server: RedisServer, books: Books, raw: aioredis.Redis
) -> None:
    shared = SharedLimitSettings(
        redis_url=redis_server.url, key_prefix=f"test{next(_PREFIXES)}:", lease_ttl_s=0.6,
        timeout_s=0.1,
    )  # fmt: skip
    a = books(shared)
    await a.admit("alice", None, 16)
    leases, _ = principal_keys(shared.key_prefix, "alice")
    assert await a.renew() == 1
    await raw.delete(leases)  # as if it had expired (the process stalled past the TTL)
    assert await a.renew() == 0
    assert await raw.exists(leases) == 0


async def test_fail_closed_then_back(
    tmp_path: Path, books: Books, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = FacadeMetrics(process_metrics=False)
    with RedisServer(tmp_path / "redis") as server:
        shared = SharedLimitSettings(redis_url=server.url, timeout_s=0.2, probe_interval_s=0.1)
        a = books(
            shared,
            on_backend=metrics.set_limits_backend,
            on_store_error=metrics.limits_store_error,
        )
        (await a.admit("alice", None, 16)).release(16)
        await a.drain()
        assert _backend(metrics) == "redis"
        server.stop()
        caplog.clear()
        with caplog.at_level(logging.WARNING, "autoglm.server.limits"):
            for _ in range(3):
                with pytest.raises(LimitsUnavailable) as info:
                    await a.admit("alice", None, 16)
            assert a.backend == "closed" and _backend(metrics) == "closed"
            status = status_for(info.value, request_id="r")
            assert status.code == grpc.StatusCode.UNAVAILABLE
            assert "limits store unreachable" in status.details
            switches = [r for r in caplog.records if "limits backend" in r.getMessage()]
            assert len(switches) == 1 and "closed" in switches[0].getMessage()
            errors = metrics.registry.get_sample_value(
                "autoglm_limits_store_errors_total", {"operation": "admit"}
            )
            assert errors == 1  # later calls do not try the store: the probe does
            server.start()  # the same port
            await _wait_for(lambda: a.backend == "redis")
            (await a.admit("alice", None, 16)).release(16)
            assert _backend(metrics) == "redis"
            await a.drain()  # the release reached the restarted store: no switch back
            switches = [r for r in caplog.records if "limits backend" in r.getMessage()]
            assert len(switches) == 2 and "reachable again" in switches[1].getMessage()


async def test_fallback_to_the_local_share(tmp_path: Path, books: Books) -> None:
    metrics = FacadeMetrics(process_metrics=False)
    with RedisServer(tmp_path / "redis") as server:
        shared = SharedLimitSettings(
            redis_url=server.url, fallback="local", timeout_s=0.2, probe_interval_s=0.1
        )
        # 4 façade processes share a quota of 8 streams and 40 requests per minute.
        quota = PrincipalLimits(max_streams=8, requests_per_minute=40)
        a = books(shared, share=4, on_backend=metrics.set_limits_backend)
        redis_ticket = await a.admit("alice", quota, 16)
        server.kill()
        held = [await a.admit("alice", quota, 16) for _ in range(2)]  # 8 / 4 = 2 here
        assert a.backend == "local" and _backend(metrics) == "local"
        err = await _refused(a, quota, 16)
        assert err.limit == "principal_concurrency" and "limit 2 per principal" in err.message
        for ticket in held:
            ticket.release(16)
        for _ in range(8):  # 40 / 4 = 10 requests per minute here, 2 spent above
            (await a.admit("alice", quota, 16)).release(16)
        assert (await _refused(a, quota, 16)).limit == "rate"
        redis_ticket.release(16)  # its store is gone: the lease will expire, nothing raises
        await a.drain()
        server.start()
        await _wait_for(lambda: a.backend == "redis")
        assert _backend(metrics) == "redis"
        (await a.admit("alice", quota, 16)).release(16)
        await a.drain()
        assert a.backend == "redis"


def _backend(metrics: FacadeMetrics) -> str:
    on = [
        name
        for name in ("redis", "local", "closed")
        if metrics.registry.get_sample_value("autoglm_limits_backend", {"backend": name}) == 1
    ]
    assert len(on) == 1, on
    return on[0]


def test_settings_are_checked() -> None:
    ok = SharedLimitSettings(redis_url="redis://127.0.0.1:6379/0")
    ok.validate()
    for bad, field in (
        ({"redis_url": "http://x"}, "limits_redis"),
        ({"redis_url": "redis://:secret@host:6379"}, "password"),
        ({"fallback": "open"}, "limits_redis_fallback"),
        ({"key_prefix": "a{b}"}, "limits_redis_prefix"),
        ({"replicas": 0}, "limits_replicas"),
        ({"lease_ttl_s": 0.5}, "limits_lease_ttl"),
    ):
        settings = SharedLimitSettings(**{"redis_url": ok.redis_url, **bad})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=field):
            settings.validate()


def test_every_worker_gets_the_shared_books_and_settings_check_them() -> None:
    shared = SharedLimitSettings(redis_url="redis://127.0.0.1:6379/0", replicas=2)
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target="127.0.0.1:8001",
        models=(ModelSpec(name="m", triton_model="m", tokenizer_dir=Path("/tmp/m")),),
        insecure_dev=True,
        workers=4,
        shared_limits=shared,
    )
    settings.validate()
    for index in range(4):
        assert worker_settings(settings, index, 5000).shared_limits == shared
    bad = dataclasses.replace(settings, shared_limits=dataclasses.replace(shared, fallback="x"))
    with pytest.raises(SettingsError, match="limits_redis_fallback"):
        bad.validate()
