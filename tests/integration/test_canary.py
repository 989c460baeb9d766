"""Canary releases against a real Triton (its own, explicit mode): two versions of one model
loaded at once, requests routed per version, a canary ended or promoted with streams in flight.

Like test_model_versions.py: a module-scoped tritonserver with its own repository installed by
the cpu-SKU installer from the real SmolLM2 folder (versions 1 and 2, version 1 pinned as the
stable one), loaded by model_versions.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.install import install
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.version_plan import (
    Canary,
    Override,
    promote_canary,
    remove_canary,
    write_canary,
    write_pin,
)
from autoglm.server.devstack.links import dev_engine_link
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.canary import Route
from autoglm.server.engine.client import EngineClient, EngineRequest, EngineSampling
from autoglm.server.engine.link import EngineLink
from autoglm.server.engine.model_versions import ModelVersions

from .conftest import engine_metric

pytestmark = pytest.mark.integration

MODEL = "smollm2-canary"
GREEDY = EngineSampling(temperature=0.0, runtime_top_k=1, runtime_top_p=1.0, seed=1,
                        repetition_penalty=1.0)  # fmt: skip
NO_END = -1  # no end token: every stream runs to its full length


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> BuildPlan:
    base = tmp_path_factory.mktemp("canary")
    return BuildPlan(
        model_dir=model_dir,
        sku="cpu",
        precision="fp32",
        output_dir=base / "build",
        model_repo=base / "model_repository",
        model_name=MODEL,
    )


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> EngineLink:
    return dev_engine_link(tmp_path_factory.mktemp("canary-pki"))


@pytest.fixture(scope="module")
def triton(plan: BuildPlan, link: EngineLink) -> Iterator[TritonProcess]:
    assert plan.model_repo is not None
    install(plan)  # version 1: the stable one (pinned)
    install(plan)  # version 2: the canary
    write_pin(plan.model_repo, Override(MODEL, version=1))
    proc = TritonProcess(
        TritonOptions(model_repository=plan.model_repo, models=(), exit_timeout_s=5, link=link)
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def engine(triton: TritonProcess, link: EngineLink) -> AsyncIterator[EngineClient]:
    client = EngineClient(
        triton.grpc_target,
        credentials=link.channel_credentials(),
        metadata=link.metadata(),
        ssl_context=link.ssl_context(),
    )
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def versions(plan: BuildPlan, engine: EngineClient) -> ModelVersions:
    assert plan.model_repo is not None
    mv = ModelVersions(plan.model_repo, engine, hardware=mf.Hardware())  # CPU host
    assert (await mv.select_and_load())[MODEL].version == 1
    return mv


def states(index: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {e.version: e.state for e in index if e.name == MODEL}


async def generate(
    engine: EngineClient,
    tokens: int,
    version: str = "",
    sink: list[int] | None = None,
    started: asyncio.Event | None = None,
) -> list[int]:
    out = sink if sink is not None else []
    request = EngineRequest(MODEL, f"c-{time.monotonic_ns()}", [1, 2, 3, 4, 5], tokens, NO_END, 2,
                            GREEDY, model_version=version)  # fmt: skip
    async for ids in engine.generate(request, timeout=400):
        out.extend(ids)
        if started is not None and len(out) >= 5:
            started.set()
    return out


async def wait_unloaded(engine: EngineClient, triton: TritonProcess, version: str) -> None:
    deadline = time.monotonic() + 300
    while states(await engine.repository_index()).get(version) not in ("UNAVAILABLE", None):
        assert time.monotonic() < deadline, f"version {version} never unloaded:\n" + (
            triton.log_tail(60)
        )
        await asyncio.sleep(0.2)


def successes(triton: TritonProcess, version: str) -> float:
    return engine_metric(triton, "nv_inference_request_success", model=MODEL, version=version)


async def start_canary(versions: ModelVersions, plan: BuildPlan, weight: int) -> None:
    assert plan.model_repo is not None
    write_canary(plan.model_repo, Canary(MODEL, 2, weight))
    await versions.select_and_load()
    assert versions.route(MODEL) == Route(MODEL, 1, 2, weight)


async def long_stream_on(
    engine: EngineClient, versions: ModelVersions, version: str
) -> tuple[asyncio.Task[list[int]], int]:
    """A stream on `version` sized to outlast a load (from the rate measured now)."""
    t0 = time.monotonic()
    await generate(engine, 10, version)
    rate = 10 / (time.monotonic() - t0)
    n = min(1000, int(rate * 3 * max(3.0, versions.loaded[MODEL].load_seconds)) + 40)
    tokens: list[int] = []
    started = asyncio.Event()
    task = asyncio.create_task(generate(engine, n, version, tokens, started))
    await asyncio.wait_for(started.wait(), 60)
    return task, n


async def test_both_versions_serve_and_a_rollback_lets_streams_finish(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan, triton: TritonProcess
) -> None:
    assert plan.model_repo is not None
    await start_canary(versions, plan, 50)
    assert states(await engine.repository_index()) == {"1": "READY", "2": "READY"}
    # Each request runs on the version it names (Triton counts successes per version).
    before = successes(triton, "1"), successes(triton, "2")
    assert len(await generate(engine, 2, "1")) == 2
    assert len(await generate(engine, 2, "2")) == 2
    assert len(await generate(engine, 2, "2")) == 2
    assert (successes(triton, "1"), successes(triton, "2")) == (before[0] + 1, before[1] + 2)
    # The canary ends while a stream runs on it: the stream completes, then it unloads.
    stream, n = await long_stream_on(engine, versions, "2")
    assert remove_canary(plan.model_repo, MODEL) is not None
    await versions.select_and_load()
    assert versions.route(MODEL) == Route(MODEL, 1)
    assert not stream.done(), "the stream ended before the rollback: size it longer"
    assert len(await stream) == n
    assert len(await generate(engine, 2)) == 2  # no version named: the stable one
    await wait_unloaded(engine, triton, "2")
    assert states(await engine.repository_index())["1"] == "READY"


async def test_promote_lets_streams_on_the_old_stable_finish(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan, triton: TritonProcess
) -> None:
    assert plan.model_repo is not None
    await start_canary(versions, plan, 10)
    stream, n = await long_stream_on(engine, versions, "1")
    promote_canary(plan.model_repo, MODEL)
    await versions.select_and_load()
    assert versions.route(MODEL) == Route(MODEL, 2)
    assert not stream.done(), "the stream ended before the promotion: size it longer"
    assert len(await stream) == n
    assert len(await generate(engine, 2, "2")) == 2
    await wait_unloaded(engine, triton, "1")
    # Back to the stable version 1 for the module's other tests.
    write_pin(plan.model_repo, Override(MODEL, version=1))
    assert (await versions.select_and_load())[MODEL].version == 1
