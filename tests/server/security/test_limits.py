"""Admission control with a fake clock: caps, release, token buckets (requests and tokens per
minute), retry hints, a local share of the quotas, no leaks."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from autoglm.server.errors import ResourceExhausted, status_for
from autoglm.server.security.limits import (
    CONCURRENCY_RETRY_AFTER_S,
    Admission,
    LimitSettings,
    PrincipalLimits,
    Ticket,
    refund,
    reservation,
    scaled,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _admission(clock: FakeClock, **settings: int) -> Admission:
    base = {
        "max_in_flight": 100,
        "max_streams_per_principal": 2,
        "requests_per_minute": 1000,
        "max_tokens_per_request": 512,
    }
    return Admission(LimitSettings(**{**base, **settings}), clock=clock)


def _refused(admission: Admission, key: str = "alice", tokens: int = 16) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as info:
        admission.admit_now(key, None, tokens)
    return info.value


def test_per_principal_concurrency_cap_and_release(clock: FakeClock) -> None:
    admission = _admission(clock)
    first = admission.admit_now("alice", None, 16)
    admission.admit_now("alice", None, 16)
    err = _refused(admission)
    assert "concurrent" in err.message and "2 per principal" in err.message
    assert err.retry_after_s == CONCURRENCY_RETRY_AFTER_S
    admission.admit_now("bob", None, 16).release()  # another principal is not affected
    first.release()
    admission.admit_now("alice", None, 16)
    assert admission.snapshot().per_principal == {"alice": 2}


def test_override_raises_or_lowers_the_default(clock: FakeClock) -> None:
    admission = _admission(clock)
    big = PrincipalLimits(max_streams=3, max_tokens_per_request=2048)
    tickets = [admission.admit_now("big", big, 2048) for _ in range(3)]
    assert tickets[0].limits.max_streams == 3
    with pytest.raises(ResourceExhausted):
        admission.admit_now("big", big, 16)
    small = PrincipalLimits(max_streams=1)
    admission.admit_now("small", small, 16)
    with pytest.raises(ResourceExhausted):
        admission.admit_now("small", small, 16)


def test_global_cap(clock: FakeClock) -> None:
    admission = _admission(clock, max_in_flight=3)
    tickets = [admission.admit_now(f"p{i}", None, 16) for i in range(3)]
    err = _refused(admission, "p9")
    assert "global" in err.message and err.retry_after_s == CONCURRENCY_RETRY_AFTER_S
    tickets[1].release()
    admission.admit_now("p9", None, 16)
    assert admission.snapshot().in_flight == 3


def test_max_tokens_is_refused_without_retry_info(clock: FakeClock) -> None:
    admission = _admission(clock)
    err = _refused(admission, tokens=513)
    assert "sampling.max_tokens 513" in err.message and "512" in err.message
    assert err.retry_after_s is None  # retrying the same request cannot succeed
    assert status_for(err, request_id="r").code == grpc.StatusCode.RESOURCE_EXHAUSTED
    admission.admit_now("alice", None, 512)  # the limit itself is allowed
    assert admission.admit_now("x", PrincipalLimits(max_tokens_per_request=8000), 8000)


def test_rpm_bucket_refills_with_the_clock(clock: FakeClock) -> None:
    admission = _admission(clock, requests_per_minute=6, max_streams_per_principal=100)
    for _ in range(6):  # the full minute's quota may burst
        admission.admit_now("alice", None, 16).release()
    err = _refused(admission)
    assert "6 requests per minute" in err.message
    assert err.retry_after_s == pytest.approx(10.0)  # one slot every 60/6 s
    clock.advance(4.0)
    assert _refused(admission).retry_after_s == pytest.approx(6.0)
    clock.advance(6.0)
    admission.admit_now("alice", None, 16).release()
    assert _refused(admission).retry_after_s == pytest.approx(10.0)
    clock.advance(600.0)  # refills to the capacity, never beyond
    for _ in range(6):
        admission.admit_now("alice", None, 16).release()
    _refused(admission)
    admission.admit_now("bob", None, 16)  # buckets are per principal


def test_retry_after_is_rounded_up_to_milliseconds(clock: FakeClock) -> None:
    admission = _admission(clock)
    limits = PrincipalLimits(requests_per_minute=7)
    for _ in range(7):
        admission.admit_now("alice", limits, 16).release()
    clock.advance(0.0001)
    with pytest.raises(ResourceExhausted) as info:
        admission.admit_now("alice", limits, 16)
    wait = info.value.retry_after_s
    assert wait is not None and wait == pytest.approx(60 / 7 - 0.0001, abs=0.001)
    assert wait >= 60 / 7 - 0.0001  # waiting exactly that long must succeed
    clock.advance(wait)
    admission.admit_now("alice", limits, 16)


def test_refusal_spends_nothing(clock: FakeClock) -> None:
    admission = _admission(clock, requests_per_minute=2, max_streams_per_principal=1)
    held = admission.admit_now("alice", None, 16)
    for _ in range(5):
        _refused(admission)  # concurrency refusals must not drain the rate bucket
    held.release()
    admission.admit_now("alice", None, 16).release()
    _refused(admission)


def test_release_on_exception_and_exactly_once(clock: FakeClock) -> None:
    admission = _admission(clock)
    with pytest.raises(RuntimeError), admission.admit_now("alice", None, 16) as ticket:
        raise RuntimeError("engine failed")
    assert ticket.released and admission.snapshot().in_flight == 0
    ticket.release()
    ticket.release()
    other = admission.admit_now("alice", None, 16)
    assert admission.snapshot().per_principal == {"alice": 1}  # not decremented twice
    other.release()


async def test_release_on_cancellation(clock: FakeClock) -> None:
    admission = _admission(clock)
    started = asyncio.Event()

    async def handler() -> None:
        async with admission.admit_now("alice", None, 16):
            started.set()
            await asyncio.Event().wait()  # a stream that never ends by itself

    task = asyncio.create_task(handler())
    await started.wait()
    assert admission.snapshot().in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.snapshot().in_flight == 0 and admission.snapshot().per_principal == {}


def test_no_leak_after_many_cycles(clock: FakeClock) -> None:
    admission = _admission(clock, requests_per_minute=100_000)
    for i in range(10_000):
        ticket: Ticket = admission.admit_now(f"p{i % 500}", None, 16)
        if i % 3 == 0:
            with ticket:
                pass
        else:
            ticket.release()
        clock.advance(0.001)
    snap = admission.snapshot()
    assert snap.in_flight == 0 and snap.per_principal == {}
    clock.advance(3600.0)
    admission.sweep()  # idle principals with full buckets are forgotten
    assert admission.snapshot().tracked_principals == 0


def test_sweep_forgets_only_idle_principals_with_full_buckets(clock: FakeClock) -> None:
    admission = _admission(clock, requests_per_minute=2)
    busy = admission.admit_now("busy", None, 16)
    admission.admit_now("idle", None, 16).release()
    clock.advance(50.0)
    admission.admit_now("recent", None, 16).release()  # its bucket is still refilling at the sweep
    clock.advance(11.0)
    admission.admit_now("new", None, 16).release()  # 61 s since the last sweep: sweeps first
    # "idle" is gone: forgetting it is harmless, a new bucket starts full like its refilled one.
    assert admission.snapshot().tracked_principals == 3  # busy, recent, new
    busy.release()


@pytest.mark.parametrize(
    "kwargs",
    [{"max_in_flight": 0}, {"requests_per_minute": -1}, {"max_tokens_per_request": True}],
)
def test_settings_are_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        LimitSettings(**kwargs)


def test_principal_limits_json_round_trip() -> None:
    limits = PrincipalLimits(requests_per_minute=30)
    assert limits.to_json() == {"requests_per_minute": 30}
    assert PrincipalLimits.from_json(limits.to_json()) == limits
    assert PrincipalLimits.from_json(None) is None and PrincipalLimits.from_json({}) is None
    with pytest.raises(ValueError, match="unknown"):
        PrincipalLimits.from_json({"rpm": 3})
    with pytest.raises(ValueError):
        PrincipalLimits.from_json({"max_streams": 0})


# --- tokens per minute (reserve at admission, settle at release) ---------------------------------


def test_reservation_and_refund_arithmetic() -> None:
    assert reservation(12, 100) == 112
    assert refund(112, 40) == 72  # prompt 12 + 28 generated: the rest comes back
    assert refund(112, 500) == 0  # never charged more than reserved
    assert refund(112, None) == 0  # unknown usage (cancelled, failed): nothing comes back
    with pytest.raises(ValueError):
        reservation(-1, 10)


def test_tokens_per_minute_bucket(clock: FakeClock) -> None:
    admission = _admission(clock, tokens_per_minute=600)  # refills 10 tokens per second
    first = admission.admit_now("alice", None, 300, 100)  # reserves 400
    err = _refused_tpm(admission, 150, 100)  # 200 left < 250
    assert err.limit == "tokens_per_minute" and "600 tokens per minute" in err.message
    assert err.retry_after_s == 5.0  # 50 missing at 10/s
    clock.advance(5.0)
    second = admission.admit_now("alice", None, 150, 100)  # 250 left after 5 s
    first.release(used_tokens=120)  # 280 of the 400 come back
    assert _tokens(admission) == pytest.approx(280.0)
    second.release(used_tokens=None)
    assert _tokens(admission) == pytest.approx(280.0)
    whole = _refused_tpm(admission, 512, 100)  # more than the whole quota: never admissible
    assert whole.retry_after_s is None and "whole quota of 600" in whole.message


def test_tokens_per_minute_override_and_token_file_round_trip(clock: FakeClock) -> None:
    admission = _admission(clock, tokens_per_minute=100)
    big = PrincipalLimits(tokens_per_minute=10_000)
    admission.admit_now("big", big, 512, 1000)
    assert PrincipalLimits.from_json(big.to_json()) == big
    with pytest.raises(ValueError, match="tokens_per_minute"):
        PrincipalLimits(tokens_per_minute=0)


def test_a_local_share_divides_the_quotas(clock: FakeClock) -> None:
    admission = Admission(
        LimitSettings(
            max_in_flight=100,
            max_streams_per_principal=8,
            requests_per_minute=40,
            max_tokens_per_request=512,
            tokens_per_minute=4000,
        ),
        clock=clock,
        share=4,
    )
    tickets = [admission.admit_now("alice", None, 16) for _ in range(2)]
    assert tickets[0].limits.max_streams == 2
    assert tickets[0].limits.tokens_per_minute == 1000
    assert tickets[0].limits.max_tokens_per_request == 512  # a ceiling, not a quota
    assert _refused(admission).limit == "principal_concurrency"
    # Above this process's share but within the whole quota: refused here without RetryInfo.
    with pytest.raises(ResourceExhausted) as info:
        admission.admit_now("bob", None, 512, 600)
    assert info.value.limit == "tokens_per_minute" and info.value.retry_after_s is None
    assert scaled(tickets[0].limits, 1) == tickets[0].limits
    one = Admission(LimitSettings(max_streams_per_principal=2), share=8)
    assert one.admit_now("x", None, 1).limits.max_streams == 1  # never below 1


def _refused_tpm(admission: Admission, tokens: int, prompt: int) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as info:
        admission.admit_now("alice", None, tokens, prompt)
    return info.value


def _tokens(admission: Admission) -> float:
    return admission._token_buckets["alice"].tokens
