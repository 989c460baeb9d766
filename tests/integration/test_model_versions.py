"""Version selection, verification and switching against a real Triton (its own, explicit mode).

A separate tritonserver (module-scoped) with its own repository, installed by the build stage's
cpu-SKU installer from the real SmolLM2 folder, started with no model (`models=()`) behind a
fresh engine link (mTLS + restricted-protocol secret): model_versions.py loads everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.install import Installed, install
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.switch_plan import GIB, Footprint
from autoglm.build_engine.version_plan import Candidate, Override, remove_pin, write_pin
from autoglm.client import Client, ClientConfig, InvalidArgumentError
from autoglm.server.devstack.links import dev_engine_link
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.client import (
    EngineClient,
    EngineRequest,
    EngineSampling,
    ModelControlError,
    RepositoryEntry,
)
from autoglm.server.engine.link import EngineLink
from autoglm.server.engine.model_versions import ModelVersions, VersionRefused
from autoglm.server.errors import EngineUnavailable
from autoglm.server.settings import Settings
from tests.support.repository import cpu_plan, linked_engine, repository_triton

from .conftest import FacadeThread, engine_metric

pytestmark = pytest.mark.integration

MODEL = "smollm2-versions"
GREEDY = EngineSampling(temperature=0.0, runtime_top_k=1, runtime_top_p=1.0, seed=1,
                        repetition_penalty=1.0)  # fmt: skip
NO_END = -1  # no end token: every stream runs to its full length (greedy would end at ~229)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> BuildPlan:
    return cpu_plan(tmp_path_factory.mktemp("versions"), model_dir, MODEL)


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> EngineLink:
    return dev_engine_link(tmp_path_factory.mktemp("versions-pki"))


@pytest.fixture(scope="module")
def triton(plan: BuildPlan, link: EngineLink) -> Iterator[TritonProcess]:
    install(plan)  # version 1
    assert plan.model_repo is not None
    with repository_triton(plan.model_repo, link) as proc:
        yield proc


@pytest.fixture(scope="module")
async def engine(triton: TritonProcess, link: EngineLink) -> AsyncIterator[EngineClient]:
    async with linked_engine(triton, link) as client:
        yield client


@pytest.fixture(scope="module")
async def versions(plan: BuildPlan, engine: EngineClient) -> ModelVersions:
    assert plan.model_repo is not None
    mv = ModelVersions(plan.model_repo, engine, hardware=mf.Hardware())  # CPU host
    loaded = await mv.select_and_load()
    assert loaded[MODEL].version == 1 and loaded[MODEL].load_seconds > 0
    return mv


def states(index: list[RepositoryEntry]) -> dict[str, str]:
    return {e.version: e.state for e in index if e.name == MODEL}


async def generate(
    engine: EngineClient,
    tokens: int,
    sink: list[int] | None = None,
    started: asyncio.Event | None = None,
) -> list[int]:
    out = sink if sink is not None else []
    request = EngineRequest(MODEL, f"v-{time.monotonic_ns()}", [1, 2, 3, 4, 5], tokens, NO_END, 2,
                            GREEDY)  # fmt: skip
    async for ids in engine.generate(request, timeout=400):
        out.extend(ids)
        if started is not None and len(out) >= 5:
            started.set()
    return out


async def test_select_verify_load(
    versions: ModelVersions, engine: EngineClient, triton: TritonProcess, link: EngineLink
) -> None:
    assert states(await engine.repository_index()) == {"1": "READY"}
    assert await engine.model_ready(MODEL, version="1")
    assert len(await generate(engine, 4)) == 4
    # model-repository is a restricted protocol: without the link's header Triton refuses.
    bare = EngineClient(
        triton.grpc_target, credentials=link.channel_credentials(), ssl_context=link.ssl_context()
    )
    try:
        with pytest.raises(ModelControlError, match="restricted") as err:
            await bare.load_model(MODEL)
        assert err.value.code is not None and err.value.code.name == "UNAVAILABLE"
    finally:
        await bare.close()
    # Reload with nothing new: no Triton call, version 1 stays.
    assert (await versions.select_and_load())[MODEL].version == 1


async def test_corrupted_or_mismatched_version_is_refused_and_v1_keeps_serving(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan
) -> None:
    corrupt = install(plan)  # version 2, then one copied file is changed
    (corrupt.version_dir / "model.py").write_text("raise SystemExit('tampered')\n")
    with pytest.raises(VersionRefused) as err:
        await versions.switch(MODEL, corrupt.version)
    assert f"{MODEL} version {corrupt.version} refused" in str(err.value)
    assert "checksum mismatch model.py" in str(err.value)
    # A version built for another SKU (manifest re-signed as an H100 fp8 build).
    other = install(plan)
    m = mf.read(other.version_dir)
    h100 = mf.Profile(**{**mf.asdict(m.profile), "sku": "h100-sxm", "compute_capability": "9.0",
                         "precision": "fp8", "kv_cache_dtype": "fp8"})  # fmt: skip
    mf.write(other.version_dir, mf.Manifest(profile=h100, files=m.files))
    with pytest.raises(VersionRefused, match=rf"version {other.version} cannot run .*no GPU here"):
        await versions.switch(MODEL, other.version)
    # Reload: the newest compatible version (2) is refused on its checksums, 1 keeps serving.
    loaded = await versions.select_and_load()
    assert loaded[MODEL].version == 1
    assert states(await engine.repository_index()) == {"1": "READY"}
    assert len(await generate(engine, 3)) == 3


async def test_triton_refusals_keep_v1_serving(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan
) -> None:
    """What Triton itself does with a version it cannot load (checksums fine, code broken)."""
    broken = install(plan)
    (broken.version_dir / "model.py").write_text("raise RuntimeError('broken on purpose')\n")
    m = mf.read(broken.version_dir)
    mf.write(broken.version_dir, mf.Manifest(m.profile, mf.hash_tree(broken.version_dir)))
    with pytest.raises(VersionRefused, match=rf"version {broken.version} refused by Triton"):
        await versions.switch(MODEL, broken.version)
    assert versions.loaded[MODEL].version == 1
    assert await engine.model_ready(MODEL, version="1")
    assert len(await generate(engine, 3)) == 3
    shutil.rmtree(broken.version_dir)  # out of the way of the next reload


@pytest.mark.timeout(600)
async def test_switch_while_streaming(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan, triton: TritonProcess
) -> None:
    new: Installed = install(plan)
    v_old, v_new = str(versions.loaded[MODEL].version), str(new.version)
    # The stream must outlast the new version's load on this (shared, noisy) machine: size it
    # from the rate measured now and the first load's time, with a wide margin.
    t0 = time.monotonic()
    await generate(engine, 10)
    rate = 10 / (time.monotonic() - t0)
    stream_tokens = min(1000, int(rate * 3 * versions.loaded[MODEL].load_seconds) + 40)
    before_old = engine_metric(triton, "nv_inference_request_success", model=MODEL, version=v_old)
    tokens: list[int] = []
    started = asyncio.Event()
    stream = asyncio.create_task(generate(engine, stream_tokens, tokens, started))
    await asyncio.wait_for(started.wait(), 60)
    t0 = time.monotonic()
    switched = await versions.switch(MODEL, new.version)
    switch_s = time.monotonic() - t0
    at_switch = len(tokens)
    index = states(await engine.repository_index())
    assert switched.version == new.version
    assert not stream.done(), f"the stream ended before the switch ({switch_s:.1f} s)"
    assert index[v_new] == "READY" and index[v_old] == "UNLOADING"
    assert await engine.model_ready(MODEL) and not await engine.model_ready(MODEL, version=v_old)
    assert len(await stream) == stream_tokens  # the in-flight stream on the old version completed
    assert len(await generate(engine, 3)) == 3  # a new request: served by the new version
    assert engine_metric(triton, "nv_inference_request_success", model=MODEL, version=v_new) == 1
    after_old = engine_metric(triton, "nv_inference_request_success", model=MODEL, version=v_old)
    assert after_old == before_old + 1  # the stream, counted on the old version
    await unloaded(engine, triton, v_old)
    print(
        f"switch {v_old}→{v_new}: load {switched.load_seconds:.1f} s, {at_switch} tokens streamed "
        f"when it returned, old version {index[v_old]} then "
        f"{states(await engine.repository_index()).get(v_old)}"
    )


@pytest.mark.timeout(600)
async def test_old_version_unloads_after_many_finished_streams(
    versions: ModelVersions,
    engine: EngineClient,
    plan: BuildPlan,
    triton: TritonProcess,
    link: EngineLink,
) -> None:
    """Each stream ends on Triton's OK trailers, not a cancel after the final response: Triton
    2.51 leaks some requests cancelled that way, and the version they ran on then never unloads
    (with the cancel, 20, 60, 100 and 300 streams each left it loaded in every trial, one or
    two trials per size; 5 streams did not)."""
    client = EngineClient(
        triton.grpc_target,
        credentials=link.channel_credentials(),
        metadata=link.metadata(),
        ssl_context=link.ssl_context(),
    )
    new = install(plan)
    v_old = str(versions.loaded[MODEL].version)
    limit = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with limit:
            assert len(await generate(client, 1 + i % 3)) == 1 + i % 3

    try:
        await asyncio.gather(*(one(i) for i in range(60)))
    finally:
        await client.close()
    assert (await versions.switch(MODEL, new.version)).version == new.version
    await unloaded(engine, triton, v_old)


async def unloaded(engine: EngineClient, triton: TritonProcess, version: str) -> None:
    """Wait for `version` to finish unloading (it stops the version's python-backend stub:
    seconds when idle, tens of seconds on 2 busy cores). With config auto-complete on, a
    broken version's auto-complete stub delayed it by minutes in CI runs; Triton now runs with
    --disable-auto-complete-config."""
    deadline = time.monotonic() + 300
    while states(await engine.repository_index()).get(version) not in ("UNAVAILABLE", None):
        assert time.monotonic() < deadline, (
            f"version {version} never finished unloading; Triton's log ends:\n{triton.log_tail(60)}"
        )
        await asyncio.sleep(0.2)


async def test_pin_switches_on_reload_then_unpin_returns_to_best(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan
) -> None:
    """`autoglm build activate` writes the pin; SIGHUP runs `select_and_load` (app.py)."""
    assert plan.model_repo is not None
    new = install(plan)  # the newest valid version: the best one
    assert (await versions.select_and_load())[MODEL].version == new.version
    write_pin(plan.model_repo, Override(model=MODEL, version=1))
    assert (await versions.select_and_load())[MODEL].version == 1
    assert await engine.model_ready(MODEL, version="1")
    assert len(await generate(engine, 3)) == 3
    assert remove_pin(plan.model_repo, MODEL)
    assert (await versions.select_and_load())[MODEL].version == new.version


def test_facade_serves_the_selected_version(
    plan: BuildPlan,
    triton: TritonProcess,
    link: EngineLink,
    versions: ModelVersions,
    tmp_path: Path,
) -> None:
    """`autoglm serve --model-repository`: the façade selects, verifies and serves a version;
    the version served at start and each switch (SIGHUP's reload) are audited."""
    settings = Settings(
        audit_dir=tmp_path / "audit",
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(),
        model_repository=plan.model_repo,
        engine_link=link,
        insecure_dev=True,  # the security layers are tested elsewhere; this is about versions
        metrics_listen=None,
    )
    facade = FacadeThread(settings)
    try:
        cfg = ClientConfig(
            endpoint=f"127.0.0.1:{facade.port}",
            ca_cert=None,
            client_cert=None,
            client_key=None,
            token=None,
            insecure=True,
        )
        with Client(cfg) as c:
            (info,) = c.list_models()
            assert (info.name, info.engine) == (MODEL, "cpu_reference")
            out = c.generate("The capital of France is", model=MODEL, max_tokens=2)
            assert out.completion_tokens == 2
        loaded = facade.running.versions.loaded[MODEL] if facade.running.versions else None
        assert loaded is not None and loaded.manifest.profile.sku == "cpu"
        # A newer version built for shorter prompts (4 tokens), pinned: the reload switches to
        # it, and the façade prepares requests for what that version was built for.
        new = install(dataclasses.replace(plan, max_input_len=4))
        write_pin(plan.model_repo, Override(MODEL, version=new.version))
        facade.run(facade.running.reload_versions())
        with Client(cfg) as c:
            with pytest.raises(InvalidArgumentError) as err:
                c.generate("The capital of France is", model=MODEL, max_tokens=2)
            assert "exceed the 4-token prompt limit" in str(err.value)
            assert c.generate("Paris", model=MODEL, max_tokens=2).completion_tokens == 2
        # Back to the version the module's other tests expect Triton to serve.
        remove_pin(plan.model_repo, MODEL)
        shutil.rmtree(new.version_dir)
        facade.run(facade.running.reload_versions())
        with Client(cfg) as c:
            out = c.generate("The capital of France is", model=MODEL, max_tokens=2)
            assert out.completion_tokens == 2
        facade.running.generations.audit.flush(timeout=10)
    finally:
        facade.stop()
    lines = (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()
    switches = [r for r in map(json.loads, lines) if r["rpc"] == "model.switch"]
    assert [(r["target"], r["reason"]) for r in switches] == [
        (f"{MODEL}:{loaded.version}", "at start"),
        (f"{MODEL}:{new.version}", f"from version {loaded.version}"),
        (f"{MODEL}:{loaded.version}", f"from version {new.version}"),
    ]


def as_gpu_engine(candidate: Candidate) -> Footprint:
    """TEST STAND-IN for the footprint of a version: every (CPU) version looks like a 16 GiB
    TensorRT-LLM engine on an 80 GiB GPU at kv_cache_free_gpu_mem_fraction 0.9, which the real
    plan (switch_plan.py) says does not fit beside another: the switch must unload first."""
    return Footprint("tensorrt_llm", 1, 16 * GIB, 0.9, 80 * GIB)


@pytest.mark.timeout(600)
async def test_switch_that_does_not_fit_unloads_first_and_restores_on_failure(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan
) -> None:
    versions.footprint_for_tests = as_gpu_engine
    try:
        await _unload_first(versions, engine, plan)
    finally:
        versions.footprint_for_tests = None


async def _unload_first(versions: ModelVersions, engine: EngineClient, plan: BuildPlan) -> None:
    new = install(plan)
    v_old = str(versions.loaded[MODEL].version)
    # A stream that outlasts the drain's start by a few seconds at the rate measured now.
    t0 = time.monotonic()
    await generate(engine, 10)
    stream_tokens = min(1000, int(10 / (time.monotonic() - t0) * 4) + 20)
    tokens: list[int] = []
    started = asyncio.Event()
    stream = asyncio.create_task(generate(engine, stream_tokens, tokens, started))
    await asyncio.wait_for(started.wait(), 60)
    switch = asyncio.create_task(versions.switch(MODEL, new.version))
    # The gap: from the unload on, Triton refuses new requests for the model (the façade maps
    # that to UNAVAILABLE) while the in-flight stream on the old version goes on.
    deadline = time.monotonic() + 60
    while states(await engine.repository_index()).get(v_old) == "READY":
        assert time.monotonic() < deadline and not switch.done()
        await asyncio.sleep(0.05)
    gap_checked = not stream.done()
    if gap_checked:
        with pytest.raises(EngineUnavailable, match="has no available versions"):
            await generate(engine, 2)
    switched = await switch
    # Unload first: the in-flight stream had finished, with all its tokens, before the new
    # version was loaded, and the old version is gone, not UNLOADING beside the new one.
    assert stream.done() and len(await stream) == stream_tokens
    assert switched.version == new.version
    index = states(await engine.repository_index())
    assert index[str(new.version)] == "READY" and index[v_old] == "UNAVAILABLE"
    assert len(await generate(engine, 3)) == 3
    print(
        f"unload first: {stream_tokens} tokens drained, a request in the gap checked: {gap_checked}"
    )
    # A new version that fails to load once the old one is unloaded: the old one comes back.
    broken = install(plan)
    (broken.version_dir / "model.py").write_text("raise RuntimeError('broken on purpose')\n")
    m = mf.read(broken.version_dir)
    mf.write(broken.version_dir, mf.Manifest(m.profile, mf.hash_tree(broken.version_dir)))
    with pytest.raises(
        VersionRefused,
        match=rf"(?s)version {broken.version} refused by Triton.*version {new.version} reloaded$",
    ):
        await versions.switch(MODEL, broken.version)
    shutil.rmtree(broken.version_dir)  # out of the way of the next reload
    assert versions.loaded[MODEL].version == new.version
    assert await engine.model_ready(MODEL, version=str(new.version))
    assert len(await generate(engine, 3)) == 3
