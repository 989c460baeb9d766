"""Smoke run of `autoglm bench --floor`: real Triton (synthetic engine) + the façade subprocess
(gRPC API and OpenAI front door) + the bare relay + the byte hop, a few seconds at concurrency 2
on the six paths (with the direct path again as the control). Asserts sane, non-empty results —
never timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.bench.harness import BenchOptions, run_bench
from autoglm.bench.workload import LengthDist

pytestmark = pytest.mark.integration

_PATHS = ("direct", "facade", "openai", "relay", "hop", "control")


def test_bench_smoke(model_dir: Path, tmp_path: Path) -> None:
    opts = BenchOptions(
        model_dir=model_dir,
        out_dir=tmp_path / "out",
        scenarios=("paced", "unpaced"),
        concurrency=(2,),
        tokens_per_second=200.0,
        prompt_len=LengthDist(16, 32),
        output_len=LengthDist(8, 16),
        warmup_s=0.5,
        duration_s=2.0,
        check_concurrency=2,
        floor=True,
        plots=False,
    )
    report = run_bench(opts, log=lambda _: None)

    assert {(r.scenario, r.path) for r in report.runs} == {
        (s, p) for s in ("paced", "unpaced") for p in _PATHS
    }
    for r in report.runs:
        s = r.summary
        assert s.errors == {}, (r.scenario, r.path, s.errors)
        assert s.ok > 0 and s.output_tokens > 0
        assert s.tokens_per_s > 0 and s.requests_per_s > 0
        for d in (s.ttft_ms, s.itl_ms, s.e2e_ms):
            assert d.count > 0
            assert 0 <= d.p50 <= d.p90 <= d.p99
        assert s.ttft_ms.p50 <= s.e2e_ms.p50
        assert s.cpu["triton"] > 0 and s.cpu["loadgen"] > 0
        if r.path in ("facade", "relay", "hop"):  # each hop's own process did the work
            assert s.cpu[r.path] > 0
        if r.path == "openai":  # the same façade process, through its HTTP front door
            assert s.cpu["facade"] > 0 and s.tokens_per_chunk >= 1
        if r.path == "relay":  # one message per batch of ids, as the façade coalesces
            assert s.tokens_per_chunk >= 1
    assert all(len(report.pairs(p)) == 2 for p in _PATHS[1:])
    assert set(report.checks) == {
        "paced c=2",
        "paced c=2 openai",
        "unpaced c=2",
        "unpaced c=2 scale-out",
    }
    assert len(report.checks["paced c=2 openai"]) == 3
    # the paced checks carry the floors' figures of the same run
    for check in report.checks["paced c=2"]:
        assert [path for path, _ in check.same_run] == ["relay", "hop", "control"]
    data = json.loads((opts.out_dir / "results.json").read_text())
    assert len(data["runs"]) == 12 and len(data["comparisons"]) == 2
    openai = data["openai_comparisons"]
    assert [c["scenario"] for c in openai] == ["paced", "unpaced"]
    for c in openai:
        assert c["facade_cpu_us_per_token"] > 0 and c["grpc_facade_cpu_us_per_token"] > 0
        assert c["client_cpu_us_per_token"] > 0 and c["tokens_per_message"] >= 1
    floors = data["floor_comparisons"]
    assert [(c["path"], c["scenario"]) for c in floors] == [
        (p, s) for p in ("relay", "hop", "control") for s in ("paced", "unpaced")
    ]
    assert all(c["cpu_us_per_token"] > 0 for c in floors)
    for c in data["comparisons"]:  # relay figures of the façade
        assert c["facade_tokens_per_core_s"] > 0 and c["facade_cores_for_h100"] > 0
        assert c["facade_tokens_per_message"] >= 1
    text = (opts.out_dir / "results.txt").read_text()
    assert "façade vs direct" in text and "relay: a bare grpc.aio relay" in text
    assert "OpenAI front door (SSE, /v1/completions) vs direct and the gRPC path" in text
    assert "hop: the direct consumer through" in text and "control: the direct path again" in text
    # paced: the streams' starts are spread over one request's length (16 tokens at 200/s, at
    # most the warm-up)
    assert any("ramp-up): paced 0.06 s, unpaced 0 s" in n for n in report.notes), report.notes
    # keep-alive: the OpenAI path's 2 streams reuse their connections request after request
    opened = [n for n in report.notes if n.startswith("openai path, ")]
    assert len(opened) == 2 and all(" 2 TLS connections opened" in n for n in opened), opened
