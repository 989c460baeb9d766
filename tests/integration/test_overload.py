"""Overload (issue #6): beyond the configured capacity, calls get RESOURCE_EXHAUSTED (with
RetryInfo) at once, the engine never sees them, the accepted calls still complete intact, and
the façade's memory stays bounded round after round.

The façade runs as a subprocess (`autoglm serve --max-in-flight 8`) so /proc/<pid>/status is its
own memory; the synthetic engine is paced (10 tokens/s, 40 tokens: an accepted stream lasts
~4 s), so every call of a round arrives while the accepted ones still hold their slots.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from autoglm.bench.stack import EngineModel, StackOptions
from autoglm.client import AsyncClient, ResourceExhaustedError
from autoglm.server.models import ModelSpec, load_model
from autoglm.server.security.limits import CONCURRENCY_RETRY_AFTER_S, LimitSettings

from .synthetic_stack import FacadeStack, cycle_ids, expected_ids, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "synthetic-overload"
CAPACITY = 8  # --max-in-flight
TOKENS_PER_SECOND = 10.0
MAX_TOKENS = 40  # an accepted stream lasts MAX_TOKENS / TOKENS_PER_SECOND = 4 s
# A refusal is a dict lookup after auth: it must come back far sooner than a slot frees (4 s).
# Loose for a busy shared 2-core machine; a call that waited for a slot would take >= 4 s.
REFUSAL_MAX_S = 1.0
REFUSAL_MEDIAN_MAX_S = 0.2
# The flood: 256 calls leave one client process at once, so the client's own event loop
# (request building, client spans) and the machine's other load are part of each call's time
# (median 1.2 s seen with a load average of 8 on the 2 cores; a slowest refusal of 3.46 s once,
# with load 12). No fixed bound there: `_check_round` proves what matters, that every refusal
# came before the first slot freed, i.e. nothing waited for a slot.
FLOOD_REFUSAL_MAX_S = None
RSS_GROWTH_MAX = 50 * 1024 * 1024


@dataclass
class Call:
    index: int
    started: float
    ended: float = 0.0
    ids: list[int] | None = None  # accepted: every id received
    text: str = ""
    finish: str | None = None
    refused: ResourceExhaustedError | None = None
    other: BaseException | None = None


@dataclass(frozen=True)
class Expectation:
    cycle: list[int]
    end_id: int
    tokenizer: Tokenizer

    def ids(self, seed: int) -> list[int]:
        return expected_ids(self.cycle, self.end_id, seed, MAX_TOKENS)


@pytest.fixture(scope="module")
def expectation(model_dir: Path) -> Expectation:
    served = load_model(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir))
    tok = served.encoder.tokenizer
    return Expectation(cycle_ids(tok), served.end_id, tok)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, expectation: Expectation
) -> Iterator[FacadeStack]:
    opts = StackOptions(
        workdir=tmp_path_factory.mktemp("overload"),
        tokenizer_dir=model_dir,
        models=(EngineModel(MODEL, TOKENS_PER_SECOND),),
        token_ids=expectation.cycle,
    )
    # Only the global limit binds: per-principal and rate limits far above the load (the
    # bench token's own overrides are unlimited too).
    limits = LimitSettings(
        max_in_flight=CAPACITY,
        max_streams_per_principal=1_000_000,
        requests_per_minute=1_000_000,
    )
    with FacadeStack(opts, limits) as s:
        yield s


async def _call(client: AsyncClient, index: int) -> Call:
    call = Call(index, time.monotonic())
    try:
        ids: list[int] = []
        async for d in client.generate_stream(
            f"overload {index}", seed=index, max_tokens=MAX_TOKENS, timeout=60
        ):
            ids.extend(d.token_ids)
            call.text += d.text
            call.finish = d.finish_reason
        call.ids = ids
    except ResourceExhaustedError as exc:
        call.refused = exc
    except Exception as exc:  # reported by the checks below
        call.other = exc
    call.ended = time.monotonic()
    return call


async def _connect(stack: FacadeStack, connections: int) -> list[AsyncClient]:
    """Channels of their own (one TLS handshake each), connected before a round starts so that
    a call's time is the server's answer, not the handshake."""
    clients = [AsyncClient(stack.client_config(MODEL)) for _ in range(connections)]
    await asyncio.gather(*(c.list_models(timeout=30) for c in clients))
    return clients


async def _round(clients: list[AsyncClient], per_connection: int, base: int) -> list[Call]:
    """len(clients) × per_connection streams fired at once."""
    n = len(clients)
    return list(
        await asyncio.gather(*(_call(clients[i % n], base + i) for i in range(n * per_connection)))
    )


def _check_round(
    calls: list[Call], exp: Expectation, max_s: float | None, median_max_s: float | None = None
) -> tuple[list[Call], list[Call]]:
    """Exactly CAPACITY calls were accepted and completed intact; all others were refused with
    RetryInfo before any slot freed, each within max_s (median within median_max_s) if given.
    Returns (accepted, refused)."""
    assert [c for c in calls if c.other is not None] == []
    accepted = [c for c in calls if c.refused is None]
    refused = [c for c in calls if c.refused is not None]
    first_done = min(c.ended for c in accepted)
    # Every call was answered while the accepted ones held all the slots, so exactly
    # CAPACITY fit; a refusal after a slot freed would make this count ambiguous.
    assert all(c.ended < first_done for c in refused)
    assert len(accepted) == CAPACITY
    for c in accepted:
        ids = exp.ids(c.index)
        assert c.ids == ids, f"call {c.index}: lost, duplicated or reordered tokens"
        assert c.text == exp.tokenizer.decode(ids)
        assert c.finish == "length"
    for c in refused:
        assert c.refused is not None
        assert c.refused.retry_after == CONCURRENCY_RETRY_AFTER_S
        assert "requests in flight" in c.refused.message
    waits = [c.ended - c.started for c in refused]
    if max_s is not None:
        assert max(waits) < max_s, f"slowest refusal {max(waits):.3f} s"
    if median_max_s is not None:
        median = statistics.median(waits)
        assert median < median_max_s, f"median refusal {median:.3f} s"
    return accepted, refused


async def test_four_times_capacity_refused_quickly_accepted_complete(
    stack: FacadeStack, expectation: Expectation
) -> None:
    rejections = "autoglm_limit_rejections"
    before = stack.facade_metric(rejections, limit="global_concurrency")
    waits: list[float] = []
    (client,) = await _connect(stack, 1)
    try:
        for r in range(3):
            calls = await _round([client], 4 * CAPACITY, base=r * 1000)
            _, refused = _check_round(calls, expectation, REFUSAL_MAX_S, REFUSAL_MEDIAN_MAX_S)
            waits += [c.ended - c.started for c in refused]
    finally:
        await client.close()
    assert stack.facade_metric(rejections, limit="global_concurrency") - before == len(waits)
    print(
        f"\n3 rounds of {4 * CAPACITY} streams vs capacity {CAPACITY}: {3 * CAPACITY} accepted "
        f"and intact, {len(waits)} RESOURCE_EXHAUSTED (retry after "
        f"{CONCURRENCY_RETRY_AFTER_S} s) in median {statistics.median(waits) * 1000:.0f} ms, "
        f"max {max(waits) * 1000:.0f} ms"
    )


class RssSampler:
    """Samples the façade's VmRSS every 50 ms in a thread, to catch the peak of a round."""

    def __init__(self, stack: FacadeStack) -> None:
        self._stack = stack
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._stack.facade_rss_bytes())
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_flood_over_many_connections_reaches_no_engine_and_memory_stays_bounded(
    stack: FacadeStack, expectation: Expectation
) -> None:
    connections, per_connection, rounds = 16, 16, 6  # 256 calls a round, 32× capacity
    success = "nv_inference_request_success"

    def engine_settled(expected: float) -> bool:
        return (
            stack.triton_metric(success, MODEL) == expected
            and stack.triton_metric("nv_inference_pending_request_count", MODEL) == 0
            and stack.facade_metric("autoglm_in_flight_requests", model=MODEL) == 0
        )

    async def flood(base: int) -> list[Call]:
        clients = await _connect(stack, connections)
        try:
            return await _round(clients, per_connection, base)
        finally:
            for c in clients:
                await c.close()

    # Warm-up round: allocator pools, TLS session state, first-use imports.
    await flood(base=100_000)
    engine_before = stack.triton_metric(success, MODEL)
    wait_until(lambda: engine_settled(engine_before), 10)
    baseline = stack.facade_rss_bytes()
    rss_after: list[int] = []
    waits: list[float] = []
    accepted_total = refused_total = 0
    with RssSampler(stack) as sampler:
        for r in range(rounds):
            calls = await flood(base=200_000 + r * 1000)
            accepted, refused = _check_round(calls, expectation, FLOOD_REFUSAL_MAX_S)
            accepted_total += len(accepted)
            refused_total += len(refused)
            waits += [c.ended - c.started for c in refused]
            # The engine got exactly the accepted requests: refused calls created none.
            target = engine_before + accepted_total
            wait_until(lambda t=target: engine_settled(t), 10)
            rss_after.append(stack.facade_rss_bytes())
    assert stack.triton_metric("nv_inference_request_failure", MODEL) == 0
    growth = max(sampler.peak, *rss_after) - baseline
    assert growth < RSS_GROWTH_MAX, f"façade RSS grew {growth / 2**20:.1f} MiB"
    mib = [f"{b / 2**20:.1f}" for b in rss_after]
    print(
        f"\n{rounds} rounds × {connections} connections × {per_connection} streams vs capacity "
        f"{CAPACITY}: {accepted_total} accepted (Triton requests +{accepted_total}), "
        f"{refused_total} refused (Triton +0) in median {statistics.median(waits) * 1000:.0f} "
        f"ms, p99 {statistics.quantiles(waits, n=100)[98] * 1000:.0f} ms, max "
        f"{max(waits) * 1000:.0f} ms; façade RSS baseline "
        f"{baseline / 2**20:.1f} MiB, after each round {mib} MiB, peak "
        f"{sampler.peak / 2**20:.1f} MiB (growth {growth / 2**20:.1f} MiB)"
    )
