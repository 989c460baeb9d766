"""The lora scenario's pieces: the façade path names the adapters in turn, the side-by-side lines
per level, and the scenario's registration (the whole run: `autoglm bench --scenario lora`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoglm.bench.facade import FacadePath
from autoglm.bench.harness import SCENARIOS, BenchOptions
from autoglm.bench.lora_runner import BASE, MIXED, ONE, SCENARIO, lora_lines
from autoglm.bench.report import RunResult
from autoglm.bench.stats import Dist, Summary
from autoglm.bench.workload import BenchRequest
from autoglm.server.devstack.pki import ensure_dev_pki


def summary(tokens_per_s: float, ttft: float) -> Summary:
    return Summary(
        requests=10,
        ok=10,
        errors={},
        output_tokens=int(tokens_per_s * 10),
        duration_s=10.0,
        ttft_ms=Dist(ttft, ttft, ttft, ttft, 10),
        itl_ms=Dist(1, 1, 1, 1, 100),
        e2e_ms=Dist(100, 100, 100, 100, 10),
        cpu={},
    )


def test_lines_put_the_three_paths_side_by_side() -> None:
    runs = [
        RunResult(SCENARIO, "m", "c=1", BASE, summary(40, 50)),
        RunResult(SCENARIO, "m", "c=1", ONE, summary(30, 70)),
        RunResult(SCENARIO, "m", "c=1", MIXED, summary(20, 90)),
        RunResult("cpu-model", "m", "c=1", "facade", summary(1, 1)),
    ]
    [line] = lora_lines(runs)
    assert line == (
        "lora c=1: base 40.0 tok/s TTFT p50 50 ms p99 50 ms | lora-1 30.0 tok/s TTFT p50 70 ms"
        " p99 70 ms | lora-8 20.0 tok/s TTFT p50 90 ms p99 90 ms"
    )


class Stub:
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def GenerateStream(self, request: Any, metadata: Any) -> Any:
        self.requests.append(request)
        return Call()


class Call:
    def __aiter__(self) -> Call:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration

    def cancel(self) -> None:
        pass


async def test_the_mixed_path_names_the_adapters_in_turn(tmp_path: Path) -> None:
    path = FacadePath("127.0.0.1:1", ensure_dev_pki(tmp_path), "t", "m", adapters=("a", "b"))
    stub = Stub()
    path._stubs = [stub]  # type: ignore[list-item]
    for _ in range(3):
        async for _tokens in path.stream(BenchRequest("hi", (1,), 4)):
            pass
    await path.close()
    assert [r.adapter for r in stub.requests] == ["a", "b", "a"]


def test_lora_is_a_scenario(tmp_path: Path) -> None:
    assert "lora" in SCENARIOS
    with pytest.raises(ValueError, match="model_dir"):  # known: only the folder is wrong
        BenchOptions(model_dir=tmp_path, out_dir=tmp_path, scenarios=("lora",)).validate()
