"""The rollback guard's comparator, window and check (engine/canary_guard.py)."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import generate_latest

from autoglm.server.engine.canary import Route
from autoglm.server.engine.canary_guard import (
    GuardSettings,
    Stats,
    VersionWindow,
    check_once,
    compare,
    percentile,
)
from autoglm.server.telemetry.metrics import FacadeMetrics

OK, FAIL = grpc.StatusCode.OK, grpc.StatusCode.INTERNAL
S = GuardSettings(window_s=60, min_requests=10, max_error_rate_delta=0.05, max_ttft_ratio=1.5)


def stats(requests: int, errors: int, ttft: float = 0.1, n_ttft: int | None = None) -> Stats:
    return Stats(requests, errors, (ttft,) * (requests - errors if n_ttft is None else n_ttft))


def test_too_few_canary_requests_decide_nothing() -> None:
    v = compare(stats(100, 0), stats(9, 9), S)
    assert not v.rollback and "9 of 10 requests" in v.reason


def test_error_rate_beyond_the_margin_rolls_back_naming_the_figures() -> None:
    v = compare(stats(100, 1), stats(10, 10), S)
    assert v.rollback
    assert "canary error rate 1.000 over 10 requests vs stable 0.010 over 100" in v.reason
    assert not compare(stats(100, 1), stats(100, 6), S).rollback  # 0.06 - 0.01 = margin
    assert compare(stats(100, 1), stats(100, 7), S).rollback


def test_ttft_p99_beyond_the_ratio_rolls_back() -> None:
    assert compare(stats(20, 0, 0.1), stats(20, 0, 0.16), S).rollback
    kept = compare(stats(20, 0, 0.1), stats(20, 0, 0.15), S)
    assert not kept.rollback and "canary TTFT p99 150.0 ms vs stable 100.0 ms" in kept.reason
    # Too few first tokens on either side: TTFT is not judged.
    assert not compare(stats(20, 0, 0.1, n_ttft=5), stats(20, 0, 9.0), S).rollback


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.99) is None
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 0.99) == 3.0


def test_window_forgets_old_calls_and_counts_server_errors_only() -> None:
    now = [0.0]
    w = VersionWindow(60, clock=lambda: now[0])
    w.observe("m", 2, FAIL, None)
    w.observe("m", 2, grpc.StatusCode.INVALID_ARGUMENT, None)  # the caller's, not the version's
    w.observe("m", 2, OK, 0.2)
    assert w.stats("m", 2) == Stats(3, 1, (0.2,))
    now[0] = 61.0
    assert w.stats("m", 2) == Stats(0, 0, ())


async def test_check_rolls_back_only_a_worse_canary() -> None:
    w = VersionWindow(60)
    for _ in range(10):
        w.observe("bad", 2, FAIL, None)
        w.observe("good", 4, OK, 0.1)
    routes = {"bad": Route("bad", 1, 2, 50), "good": Route("good", 3, 4, 50), "x": Route("x", 1)}
    called: list[tuple[str, str]] = []

    async def rollback(model: str, reason: str) -> int | None:
        called.append((model, reason))
        return routes[model].canary

    done = await check_once(lambda: routes, w, S, rollback)
    assert [(m, v) for m, v, _ in done] == [("bad", 2)] and called[0][0] == "bad"
    assert called[0][1].startswith("rollback guard: canary error rate 1.000")
    assert w.stats("bad", 2).requests == 0  # forgotten once rolled back


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window_s": 0}, "window_s"),
        ({"min_requests": 0}, "min_requests"),
        ({"max_error_rate_delta": 1.0}, "max_error_rate_delta"),
        ({"max_ttft_ratio": -1}, "max_ttft_ratio"),
        ({"interval_s": 0}, "interval_s"),
    ],
)
def test_bad_settings_name_the_field(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GuardSettings(**changes).validate()  # type: ignore[arg-type]


def test_version_metrics_count_each_served_version() -> None:
    metrics = FacadeMetrics(["m"])
    metrics.version_outcome("m", 2, FAIL, None)
    metrics.version_outcome("m", 1, OK, 0.05)
    text = generate_latest(metrics.registry).decode()
    assert 'autoglm_model_version_requests_total{code="INTERNAL",model="m",version="2"} 1.0' in text
    assert 'autoglm_model_version_requests_total{code="OK",model="m",version="1"} 1.0' in text
    assert 'autoglm_model_version_time_to_first_token_seconds_count{model="m",version="1"} 1.0' in (
        text
    )
