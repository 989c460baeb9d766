"""Targets (pass/fail against the same run's baseline) and the report's JSON/table."""

from __future__ import annotations

import json
import math

import pytest

from autoglm.bench.report import BenchReport, RunResult, table, to_json
from autoglm.bench.stats import Dist, Summary
from autoglm.bench.targets import paced_checks, unpaced_checks


def _summary(tokens: int, ttft: float, itl: float, cpu: dict[str, float]) -> Summary:
    return Summary(
        requests=10,
        ok=10,
        errors={},
        output_tokens=tokens,
        duration_s=10.0,
        ttft_ms=Dist(ttft, ttft, ttft, ttft, 10),
        itl_ms=Dist(itl, itl, itl, itl, 100),
        e2e_ms=Dist(1000, 1000, 1000, 1000, 10),
        cpu=cpu,
    )


def test_paced_checks() -> None:
    direct = _summary(10_000, 30.0, 26.0, {})
    ok = paced_checks(direct, _summary(9_950, 30.8, 27.5, {}))
    assert [c.passed for c in ok] == [True, True, True]
    bad = paced_checks(direct, _summary(9_800, 32.0, 29.0, {}))
    assert [c.passed for c in bad] == [False, False, False]
    assert "FAIL" in bad[0].line()


def test_unpaced_check_compares_facade_with_the_direct_consumer() -> None:
    direct = _summary(1000, 1, 1, {"loadgen": 0.1, "facade": 0.0})
    assert unpaced_checks(direct, _summary(1000, 1, 1, {"facade": 0.1}))[0].passed
    assert not unpaced_checks(direct, _summary(1000, 1, 1, {"facade": 0.3}))[0].passed
    # no measurement is never a pass
    assert not unpaced_checks(direct, _summary(0, 1, 1, {}))[0].passed


def test_report_json_and_table() -> None:
    report = BenchReport({"nproc": 2}, {"x": 1})
    d = RunResult("paced", "m", "c=64", "direct", _summary(100, 30, 25, {"loadgen": 0.01}), 0.1)
    f = RunResult("paced", "m", "c=64", "facade", _summary(99, 31, 26, {"facade": 0.02}), 0.2)
    report.runs += [d, f]
    report.checks["paced c=64"] = paced_checks(d.summary, f.summary)
    data = to_json(report)
    json.dumps(data, allow_nan=False)  # every NaN became null
    assert data["comparisons"][0]["tokens_per_s_ratio"] == 0.99
    assert data["comparisons"][0]["cpu_per_token_ratio"] == pytest.approx(200 / 99)
    assert data["runs"][0]["summary"]["cpu_us_per_token"] == {"loadgen": 100.0}
    assert data["checks"]["paced c=64"][0]["passed"] is True
    # 0.01 (loadgen) and 0.02 (façade) CPU-s over the 10 s window
    assert data["comparisons"][0]["direct_path_cores_busy"] == pytest.approx(0.001)
    assert data["comparisons"][0]["facade_path_cores_busy"] == pytest.approx(0.002)
    out = table(report)
    assert "façade vs direct" in out and "paced c=64" in out and "×0.990" in out
    assert "cores busy: direct path 0.00, façade path 0.00 of 2" in out
    assert math.isnan(_summary(1, 1, 1, {}).cores_busy)
    # with the machine's own busy seconds (bench runs have them), that is the figure
    busy = _summary(1, 1, 1, {"facade": 3.0, "triton": 5.0, "loadgen": 2.0, "machine": 16.0})
    assert busy.cores_busy == 1.6


def test_scaleout_check_and_per_core_figures() -> None:
    from autoglm.bench.stats import Dist, Summary
    from autoglm.bench.targets import cores_for, scaleout_checks, tokens_per_core_s

    dist = Dist(1.0, 1.0, 1.0, 1.0, 1)
    # 20,000 tokens relayed with 1.0 façade CPU-second: 20,000 tokens/s per core.
    s = Summary(10, 10, {}, 20_000, 10.0, dist, dist, dist, {"facade": 1.0}, chunks=5_000)
    assert tokens_per_core_s(s) == 20_000
    assert cores_for(s) == 1.4
    assert s.tokens_per_chunk == 4.0
    (check,) = scaleout_checks(s)
    assert check.passed and check.measured == 1.4
    slow = Summary(10, 10, {}, 20_000, 10.0, dist, dist, dist, {"facade": 4.0})
    assert not scaleout_checks(slow)[0].passed


def test_floor_comparison_and_table() -> None:
    """--floor: the floors' runs are compared with direct, apart from the façade's checks."""
    report = BenchReport({"nproc": 2}, {})
    d = RunResult("paced", "m", "c=64", "direct", _summary(100, 30, 25, {"loadgen": 0.01}), 0.1)
    f = RunResult("paced", "m", "c=64", "facade", _summary(99, 34, 28, {"facade": 0.02}), 0.1)
    r = RunResult("paced", "m", "c=64", "relay", _summary(100, 32, 27, {"relay": 0.015}), 0.1)
    h = RunResult("paced", "m", "c=64", "hop", _summary(100, 31, 26, {"hop": 0.004}), 0.1)
    c = RunResult("paced", "m", "c=64", "control", _summary(100, 29.5, 26, {"loadgen": 0.011}))
    report.runs += [d, f, r, h, c]
    data = to_json(report)
    assert len(data["comparisons"]) == 1  # the façade's, judged by the targets
    relay, hop, control = data["floor_comparisons"]
    assert [x["path"] for x in (relay, hop, control)] == ["relay", "hop", "control"]
    assert relay["added_ttft_p50_ms"] == 2.0 and relay["added_itl_p99_ms"] == 2.0
    assert relay["cpu_group"] == "relay" and relay["cpu_us_per_token"] == 150.0
    assert hop["added_ttft_p50_ms"] == 1.0 and hop["cpu_us_per_token"] == 40.0
    # the control is the direct consumer again: its CPU is the load generator's
    assert control["added_ttft_p50_ms"] == -0.5 and control["cpu_group"] == "loadgen"
    assert control["cpu_us_per_token"] == 110.0
    out = table(report)
    assert "relay: a bare grpc.aio relay" in out and "hop: the direct consumer through" in out
    assert "control: the direct path again" in out
    assert "+TTFT p50 2.00 ms  +ITL p99 2.00 ms  CPU/token relay 150 µs" in out
    assert "+TTFT p50 1.00 ms  +ITL p99 1.00 ms  CPU/token hop 40 µs" in out
    assert "+TTFT p50 -0.50 ms  +ITL p99 1.00 ms  CPU/token loadgen 110 µs" in out
    # each floor's row shows its own process's CPU per token in the first CPU column
    rows = [line for line in out.splitlines() if line.startswith("paced")]
    (relay_row,) = [line for line in rows if " relay " in line]
    (hop_row,) = [line for line in rows if " hop " in line]
    assert "150/-/-" in relay_row and "40/-/-" in hop_row


def test_paced_checks_carry_the_floors_figures() -> None:
    """With --floor, each paced check prints the same figure for the floors' paths against the
    same direct run — the control (direct again) being the run's own noise."""
    direct = _summary(10_000, 30.0, 26.0, {})
    floors = {
        "relay": _summary(9_950, 33.0, 27.0, {}),
        "hop": _summary(10_000, 30.5, 26.5, {}),
        "control": _summary(9_900, 29.0, 23.0, {}),
    }
    checks = paced_checks(direct, _summary(9_950, 30.8, 27.5, {}), floors)
    assert [c.passed for c in checks] == [True, True, True]  # the verdicts do not change
    got = [[(p, round(v, 6)) for p, v in c.same_run] for c in checks]
    assert got == [
        [("relay", 0.995), ("hop", 1.0), ("control", 0.99)],
        [("relay", 3.0), ("hop", 0.5), ("control", -1.0)],
        [("relay", 1.0), ("hop", 0.5), ("control", -3.0)],
    ]
    line = checks[1].line()
    assert line.endswith("; the same in this run for relay 3.000, hop 0.500, control -1.000")
    assert "the same in this run" not in paced_checks(direct, direct)[0].line()


def test_openai_checks() -> None:
    """Paced, issue #21: tokens/s >= 0.99 × direct; façade CPU/token on SSE <= 1.25 × gRPC's;
    added p50 TTFT <= the gRPC path's + 1 ms."""
    from autoglm.bench.targets import openai_checks

    direct = _summary(10_000, 30.0, 26.0, {"loadgen": 1.0})
    grpc = _summary(9_950, 30.5, 27.0, {"facade": 1.0})  # 100 µs/token
    ok = openai_checks(direct, grpc, _summary(9_950, 31.4, 27.0, {"facade": 1.2}))
    assert [c.passed for c in ok] == [True, True, True]
    assert [c.measured for c in ok] == pytest.approx([0.995, 1.2, 1.4])
    assert ok[2].limit == pytest.approx(1.5)  # the gRPC path's 0.5 ms + 1 ms
    bad = openai_checks(direct, grpc, _summary(9_800, 31.6, 27.0, {"facade": 1.3}))
    assert [c.passed for c in bad] == [False, False, False]
    # without the gRPC run only the throughput is judged; no CPU figure is never a pass
    assert len(openai_checks(direct, None, grpc)) == 1
    no_cpu = openai_checks(direct, _summary(9_950, 30.5, 27.0, {}), grpc)
    assert not no_cpu[1].passed


def test_openai_comparison_and_table() -> None:
    report = BenchReport({"nproc": 2}, {})
    d = RunResult("paced", "m", "c=64", "direct", _summary(100, 30, 25, {"loadgen": 0.01}), 0.1)
    g = RunResult(
        "paced", "m", "c=64", "facade", _summary(99, 31, 26, {"facade": 0.02, "loadgen": 0.005})
    )
    o = RunResult(
        "paced", "m", "c=64", "openai", _summary(99, 31.5, 26, {"facade": 0.022, "loadgen": 0.003})
    )
    report.runs += [d, g, o]
    data = to_json(report)
    json.dumps(data, allow_nan=False)
    assert len(data["comparisons"]) == 1  # the gRPC façade's
    (c,) = data["openai_comparisons"]
    assert c["tokens_per_s_ratio"] == 0.99 and c["added_ttft_p50_ms"] == 1.5
    assert c["grpc_added_ttft_p50_ms"] == 1.0 and c["ttft_p50_minus_grpc_ms"] == 0.5
    assert c["cpu_per_token_vs_grpc"] == pytest.approx(1.1)
    assert c["client_cpu_us_per_token"] == pytest.approx(3000 / 99, abs=1e-3)
    out = table(report)
    assert "OpenAI front door (SSE, /v1/completions) vs direct and the gRPC path" in out
    assert "+TTFT p50 1.50 ms (gRPC 1.00 ms)" in out and "(×1.10); client 30 µs" in out
    # the OpenAI row's first CPU column is the façade's
    (row,) = [line for line in out.splitlines() if line.startswith("paced") and " openai " in line]
    assert "222/-/30" in row
    # an OpenAI run without a gRPC run at its level: NaN figures print as "-"
    report.runs.remove(g)
    (c,) = to_json(report)["openai_comparisons"]
    assert c["cpu_per_token_vs_grpc"] is None
    assert "(gRPC - ms)" in table(report)
