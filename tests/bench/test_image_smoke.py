"""Smoke run of `autoglm bench --scenario images`: the real Triton serving the tiny GLM-4.1V
with the CPU engine of the vLLM contract, the façade subprocess (gRPC API through the client
library and the OpenAI front door), two screenshots, a few seconds at concurrency 1 on the four
paths. Asserts sane, non-empty results — never timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.bench.harness import BenchOptions, run_bench
from autoglm.bench.workload import LengthDist

pytestmark = pytest.mark.integration

_PATHS = ("direct", "facade", "openai", "text")


def test_image_bench_smoke(model_dir: Path, vlm_dir: Path, tmp_path: Path) -> None:
    opts = BenchOptions(
        model_dir=model_dir,
        out_dir=tmp_path / "out",
        scenarios=("images",),
        vl_model_dir=vlm_dir,
        image_concurrency=(1,),
        image_output_len=LengthDist(4, 4),
        screenshots=2,
        warmup_s=0.5,
        duration_s=2.0,
        plots=False,
    )
    report = run_bench(opts, log=lambda _: None)

    assert [r.path for r in report.runs] == list(_PATHS)
    for r in report.runs:
        s = r.summary
        assert r.scenario == "images" and s.errors == {}, (r.path, s.errors)
        assert s.ok > 0 and s.output_tokens > 0 and s.ttft_ms.count > 0
        assert s.cpu["triton"] > 0 and s.cpu["loadgen"] > 0
        if r.path != "direct":
            assert s.cpu["facade"] > 0
    data = json.loads((opts.out_dir / "results.json").read_text())
    (c,) = data["image_comparisons"]
    for path in ("facade", "openai"):
        assert c[f"{path}_cpu_ms_per_request"] > 0 and c[f"{path}_ttft_p50_ms"] > 0
        # every image request the façade checked is on its span, matched to its window
        assert c[f"{path}_image_seconds"]["count"] > 0
        assert c[f"{path}_image_seconds"]["p50_ms"] > 0
    assert c["text_cpu_ms_per_request"] > 0 and c["direct_triton_cpu_ms_per_request"] > 0
    cost = data["images"]["cost"]
    assert cost["screenshots"] == 2 and cost["image_tokens"] == 592
    assert cost["check_images"]["cpu_ms_p50"] > 0
    assert data["comparisons"] == []  # per request, not per token: image_comparisons
    text = (opts.out_dir / "results.txt").read_text()
    assert "images (the agent's step" in text and "image handling gRPC" in text
    assert not [n for n in report.notes if "spans reached the sink" in n], report.notes
