"""Pure statistics of the bench: percentiles, per-request figures, the window summary."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from autoglm.bench.stats import Dist, RequestRecord, percentile, summarize


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    rng = random.Random(q)
    values = [rng.expovariate(1.0) for _ in range(101)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 101)


def test_dist_in_milliseconds_and_ordered() -> None:
    d = Dist.of_seconds([0.001 * i for i in range(1, 101)])
    assert d.count == 100
    assert d.p50 <= d.p90 <= d.p99
    assert d.p50 == pytest.approx(50.5)
    assert d.mean == pytest.approx(50.5)


def test_record_ttft_and_inter_token_latency() -> None:
    r = RequestRecord(start=10.0, end=10.5, chunks=((10.1, 1), (10.2, 1), (10.4, 2)))
    assert r.tokens == 4
    assert r.ttft == pytest.approx(0.1)
    # the 2-token chunk's gap is spread over its two tokens
    assert r.inter_token_latencies() == pytest.approx([0.1, 0.1, 0.1])
    assert RequestRecord(0.0, 1.0).ttft is None


def test_summarize_uses_the_window() -> None:
    warm = RequestRecord(0.0, 2.0, ((0.5, 1), (1.5, 1)))  # started in warm-up
    a = RequestRecord(1.0, 3.0, ((1.2, 1), (1.4, 1), (2.9, 1)))
    b = RequestRecord(2.0, 2.5, (), status="UNAVAILABLE")
    late = RequestRecord(3.5, 4.0, ((3.6, 1),))  # started after the window
    s = summarize([warm, a, b, late], (1.0, 3.0), {"facade": 0.002})
    assert (s.requests, s.ok, s.errors) == (2, 1, {"UNAVAILABLE": 1})
    # tokens that arrived inside [1, 3): warm-up's at 1.5 and a's three
    assert s.output_tokens == 4
    assert s.tokens_per_s == pytest.approx(2.0)
    assert s.requests_per_s == pytest.approx(0.5)
    assert s.ttft_ms.p50 == pytest.approx(200.0)
    assert s.e2e_ms.count == 1
    assert s.cpu_us_per_token("facade") == pytest.approx(500.0)
    assert math.isnan(s.cpu_us_per_token("triton"))
