"""Canary releases against a real Triton (its own, explicit mode): a canary version loaded as
its own Triton model (`<model>__canary`) beside the stable version, requests routed per version,
a canary ended or promoted with streams in flight.

Like test_model_versions.py: a module-scoped tritonserver with its own repository installed by
the cpu-SKU installer from the real SmolLM2 folder (versions 1 and 2, version 1 pinned as the
stable one), loaded by model_versions.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.canary_fit import share_kv
from autoglm.build_engine.canary_records import (
    Canary,
    canary_alias,
    promote_canary,
    remove_canary,
    write_canary,
)
from autoglm.build_engine.install import install
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.switch_plan import GIB, Footprint, SwitchPolicy
from autoglm.build_engine.version_plan import Candidate, Override, write_pin
from autoglm.server.devstack.links import dev_engine_link
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.canary import Route, bucket
from autoglm.server.engine.canary_guard import GuardSettings
from autoglm.server.engine.client import EngineClient, EngineRequest, EngineSampling
from autoglm.server.engine.link import EngineLink
from autoglm.server.engine.model_versions import ModelVersions
from autoglm.server.engine.version_config import KV_FRACTION
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings import Settings, TlsSettings
from autoglm.triton_models.cpu_engine.versions import TEST_ONLY_FAIL
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc
from tests.support.repository import cpu_plan, linked_engine, repository_triton

from .conftest import FacadeThread, engine_metric

pytestmark = pytest.mark.integration

MODEL = "smollm2-canary"
ALIAS = canary_alias(MODEL)  # the canary's own Triton model
GREEDY = EngineSampling(temperature=0.0, runtime_top_k=1, runtime_top_p=1.0, seed=1,
                        repetition_penalty=1.0)  # fmt: skip
NO_END = -1  # no end token: every stream runs to its full length


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> BuildPlan:
    return cpu_plan(tmp_path_factory.mktemp("canary"), model_dir, MODEL)


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> EngineLink:
    return dev_engine_link(tmp_path_factory.mktemp("canary-pki"))


@pytest.fixture(scope="module")
def triton(plan: BuildPlan, link: EngineLink) -> Iterator[TritonProcess]:
    assert plan.model_repo is not None
    install(plan)  # version 1: the stable one (pinned)
    install(plan)  # version 2: the canary
    write_pin(plan.model_repo, Override(MODEL, version=1))
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
    assert (await mv.select_and_load())[MODEL].version == 1
    return mv


def served(route: Route | None) -> tuple[int, int | None] | None:
    """(stable, canary) of a route."""
    return None if route is None else (route.stable, route.canary)


def states(index: list, model: str = MODEL) -> dict[str, str]:  # type: ignore[type-arg]
    return {e.version: e.state for e in index if e.name == model}


async def generate(
    engine: EngineClient,
    tokens: int,
    version: str = "",
    sink: list[int] | None = None,
    started: asyncio.Event | None = None,
    model: str = MODEL,
) -> list[int]:
    out = sink if sink is not None else []
    request = EngineRequest(model, f"c-{time.monotonic_ns()}", [1, 2, 3, 4, 5], tokens, NO_END, 2,
                            GREEDY, model_version=version)  # fmt: skip
    async for ids in engine.generate(request, timeout=400):
        out.extend(ids)
        if started is not None and len(out) >= 5:
            started.set()
    return out


async def wait_unloaded(
    engine: EngineClient, triton: TritonProcess, version: str, model: str = MODEL
) -> None:
    deadline = time.monotonic() + 300
    while states(await engine.repository_index(), model).get(version) not in (
        "UNAVAILABLE",
        None,
    ):
        assert time.monotonic() < deadline, f"version {version} never unloaded:\n" + (
            triton.log_tail(60)
        )
        await asyncio.sleep(0.2)


def successes(triton: TritonProcess, version: str, model: str = MODEL) -> float:
    return engine_metric(triton, "nv_inference_request_success", model=model, version=version)


async def start_canary(versions: ModelVersions, plan: BuildPlan, weight: int) -> None:
    assert plan.model_repo is not None
    write_canary(plan.model_repo, Canary(MODEL, 2, weight))
    await versions.select_and_load()
    assert versions.route(MODEL) == Route(MODEL, 1, 2, weight, ALIAS)


async def long_stream_on(
    engine: EngineClient, versions: ModelVersions, version: str, model: str = MODEL
) -> tuple[asyncio.Task[list[int]], int]:
    """A stream on `version` sized to outlast a load (from the rate measured now)."""
    t0 = time.monotonic()
    await generate(engine, 10, version, model=model)
    rate = 10 / (time.monotonic() - t0)
    n = min(1000, int(rate * 3 * max(3.0, versions.loaded[MODEL].load_seconds)) + 40)
    tokens: list[int] = []
    started = asyncio.Event()
    task = asyncio.create_task(generate(engine, n, version, tokens, started, model))
    await asyncio.wait_for(started.wait(), 60)
    return task, n


async def test_both_versions_serve_and_a_rollback_lets_streams_finish(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan, triton: TritonProcess
) -> None:
    assert plan.model_repo is not None
    await start_canary(versions, plan, 50)
    index = await engine.repository_index()
    assert states(index) == {"1": "READY"} and states(index, ALIAS) == {"2": "READY"}
    # Each request runs where it is sent (Triton counts successes per model and version); a
    # request naming no model version reaches the stable one, the model's only version.
    before = successes(triton, "1"), successes(triton, "2", ALIAS)
    assert len(await generate(engine, 2)) == 2
    assert len(await generate(engine, 2, "2", model=ALIAS)) == 2
    assert len(await generate(engine, 2, "2", model=ALIAS)) == 2
    after = successes(triton, "1"), successes(triton, "2", ALIAS)
    assert after == (before[0] + 1, before[1] + 2)
    # The canary ends while a stream runs on it: the stream completes, then it unloads.
    stream, n = await long_stream_on(engine, versions, "2", ALIAS)
    assert remove_canary(plan.model_repo, MODEL) is not None
    await versions.select_and_load()
    assert served(versions.route(MODEL)) == (1, None)
    assert not stream.done(), "the stream ended before the rollback: size it longer"
    assert len(await stream) == n
    assert len(await generate(engine, 2)) == 2  # no version named: the stable one
    await wait_unloaded(engine, triton, "2", ALIAS)
    assert states(await engine.repository_index())["1"] == "READY"


async def test_a_rollback_by_another_process_is_followed(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan
) -> None:
    """Two façade processes (two ModelVersions on one Triton): one process's rollback guard
    ends the canary; the other's routes follow at its next guard check (follow_records)."""
    assert plan.model_repo is not None
    await start_canary(versions, plan, 30)
    other = ModelVersions(plan.model_repo, engine, hardware=mf.Hardware())
    await other.select_and_load()  # finds both loaded: nothing to load, the same routes
    assert other.route(MODEL) == Route(MODEL, 1, 2, 30, ALIAS)
    assert await other.follow_records() == []  # the record is still there
    assert await versions.rollback(MODEL, "test") == 2
    assert served(versions.route(MODEL)) == (1, None)
    assert await other.follow_records() == [(MODEL, 2)]
    assert served(other.route(MODEL)) == (1, None)
    assert len(await generate(engine, 2)) == 2


async def test_promote_lets_streams_on_the_old_stable_finish(
    versions: ModelVersions, engine: EngineClient, plan: BuildPlan, triton: TritonProcess
) -> None:
    assert plan.model_repo is not None
    await start_canary(versions, plan, 10)
    stream, n = await long_stream_on(engine, versions, "1")
    canary_stream, canary_n = await long_stream_on(engine, versions, "2", ALIAS)
    promote_canary(plan.model_repo, MODEL)
    await versions.select_and_load()
    assert versions.route(MODEL) == Route(MODEL, 2)
    assert not stream.done(), "the stream ended before the promotion: size it longer"
    # Streams on the old stable version and on the canary model both finish whole.
    assert len(await stream) == n and len(await canary_stream) == canary_n
    assert len(await generate(engine, 2, "2")) == 2
    await wait_unloaded(engine, triton, "1")
    await wait_unloaded(engine, triton, "2", ALIAS)
    # Back to the stable version 1 for the module's other tests.
    write_pin(plan.model_repo, Override(MODEL, version=1))
    assert (await versions.select_and_load())[MODEL].version == 1


def post(url: str, body: dict[str, object]) -> bytes:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()  # type: ignore[no-any-return]


def test_facade_says_which_version_answered(
    plan: BuildPlan, triton: TritonProcess, link: EngineLink, tmp_path: Path
) -> None:
    """Through `autoglm serve` (dev mode: every call is the principal "anonymous"): the gRPC
    trailer, OpenAI's system_fingerprint in the body and every chunk, and the audit records
    (the canary's start, each generation's model_version, the rollback on SIGHUP's reload)."""
    assert plan.model_repo is not None
    write_canary(plan.model_repo, Canary(MODEL, 2, 50))
    expected = Route(MODEL, 1, 2, 50).version_for("anonymous")
    settings = Settings(
        audit_dir=tmp_path / "audit",
        listen="127.0.0.1:0",
        openai_listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(),
        model_repository=plan.model_repo,
        engine_link=link,
        insecure_dev=True,
        metrics_listen=None,
    )
    facade = FacadeThread(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{facade.port}") as channel:
            stub = pb_grpc.TextGenerationStub(channel)
            request = pb.GenerateRequest(
                model=MODEL, prompt="Hello", sampling=pb.SamplingParams(max_tokens=1)
            )
            for _ in range(3):  # sticky: the same principal, the same version
                _, call = stub.Generate.with_call(request, timeout=60)
                trailers = dict(call.trailing_metadata() or ())
                assert trailers["x-autoglm-model-version"] == str(expected)
            responses = stub.GenerateStream(request, timeout=60)
            list(responses)
            assert dict(responses.trailing_metadata())["x-autoglm-model-version"] == str(expected)
        url = f"http://127.0.0.1:{facade.running.openai_port}/v1/chat/completions"
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        body = json.loads(post(url, chat))
        assert body["system_fingerprint"] == f"autoglm-{MODEL}-v{expected}"
        events = [
            json.loads(line[6:])
            for line in post(url, chat | {"stream": True}).decode().splitlines()
            if line.startswith("data: {")
        ]
        assert events and all(
            e["system_fingerprint"] == f"autoglm-{MODEL}-v{expected}" for e in events
        )
        remove_canary(plan.model_repo, MODEL)
        facade.run(facade.running.reload_versions())
        assert facade.running.versions is not None
        assert served(facade.running.versions.route(MODEL)) == (1, None)
        facade.running.generations.audit.flush(timeout=10)
    finally:
        facade.stop()
    records = [json.loads(r) for r in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()]
    decisions = [(r["rpc"], r["target"]) for r in records if r["rpc"].startswith("model.")]
    assert decisions == [
        ("model.switch", f"{MODEL}:1"),
        ("model.canary", f"{MODEL}:2"),
        ("model.rollback", f"{MODEL}:2"),
    ]
    generations = [r for r in records if r["rpc"] in ("Generate", "GenerateStream")]
    assert len(generations) == 4 and {r["model_version"] for r in generations} == {expected}


def install_failing(plan: BuildPlan) -> int:
    """A new version whose config turns on the CPU engine's test-only failure switch (its
    manifest re-hashed, as an installer would have written it)."""
    vdir = install(plan).version_dir
    config = vdir / mf.VERSION_CONFIG
    config.write_text(
        config.read_text()
        + f'parameters {{ key: "{TEST_ONLY_FAIL}" value: {{ string_value: "true" }} }}\n'
    )
    manifest = mf.read(vdir)
    files = {**manifest.files, mf.VERSION_CONFIG: mf.sha256_file(config)}
    mf.write(vdir, dataclasses.replace(manifest, files=files))
    return int(vdir.name)


def test_failing_canary_is_rolled_back_by_the_guard(
    plan: BuildPlan, triton: TritonProcess, link: EngineLink, tmp_path: Path
) -> None:
    """A canary that fails every request: the guard ends it within a check of the
    min_requests-th failure, removes its record and audits model.rollback with the figures."""
    assert plan.model_repo is not None
    bad = install_failing(plan)
    assert bucket("anonymous") < 60  # dev mode's one principal lands on the canary
    write_canary(plan.model_repo, Canary(MODEL, bad, 60))
    settings = Settings(
        audit_dir=tmp_path / "audit",
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(),
        model_repository=plan.model_repo,
        engine_link=link,
        insecure_dev=True,
        metrics_listen=None,
        canary_guard=GuardSettings(window_s=120, min_requests=4, interval_s=0.2),
    )
    facade = FacadeThread(settings)
    try:
        versions = facade.running.versions
        assert versions is not None and versions.route(MODEL) == Route(MODEL, 1, bad, 60, ALIAS)
        with grpc.insecure_channel(f"127.0.0.1:{facade.port}") as channel:
            stub = pb_grpc.TextGenerationStub(channel)
            request = pb.GenerateRequest(
                model=MODEL, prompt="Hello", sampling=pb.SamplingParams(max_tokens=1)
            )
            for _ in range(4):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Generate(request, timeout=60)
                # INTERNAL from the canary's engine. Deep health probes the stable model, so
                # the failing canary never ejects the endpoint (that would be UNAVAILABLE).
                assert err.value.code() == grpc.StatusCode.INTERNAL, err.value
            deadline = time.monotonic() + 60
            while served(versions.route(MODEL)) != (1, None):
                assert time.monotonic() < deadline, "the guard never rolled the canary back"
                time.sleep(0.1)
            assert not (plan.model_repo / MODEL / "canary.json").exists()
            # The stable version answers at once: it served throughout.
            _, call = stub.Generate.with_call(request, timeout=60)
            assert dict(call.trailing_metadata() or ())["x-autoglm-model-version"] == "1"
        # The guard audits once the canary's model is unloaded (it may still be unloading).
        log = tmp_path / "audit" / "audit.jsonl"
        while True:
            facade.running.generations.audit.flush(timeout=10)
            if '"model.rollback"' in log.read_text():
                break
            assert time.monotonic() < deadline, "no model.rollback record"
            time.sleep(0.1)
    finally:
        facade.stop()
    records = [json.loads(r) for r in log.read_text().splitlines()]
    (rollback,) = [r for r in records if r["rpc"] == "model.rollback"]
    assert rollback["target"] == f"{MODEL}:{bad}"
    assert rollback["reason"].startswith("rollback guard: canary error rate 1.000 over 4 requests")


def as_gpu_engine(candidate: Candidate) -> Footprint:
    """TEST STAND-IN for a version's footprint: every (CPU) version looks like a 16 GiB
    TensorRT-LLM engine on an 80 GiB GPU at kv_cache_free_gpu_mem_fraction 0.9."""
    return Footprint("tensorrt_llm", 1, 16 * GIB, 0.9, 80 * GIB)


async def test_canary_that_cannot_fit_on_the_gpu_is_refused(
    plan: BuildPlan, engine: EngineClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert plan.model_repo is not None
    write_canary(plan.model_repo, Canary(MODEL, 2, 10))
    mv = ModelVersions(
        plan.model_repo, engine, hardware=mf.Hardware(), footprint_for_tests=as_gpu_engine
    )
    try:
        assert (await mv.select_and_load())[MODEL].version == 1
        assert served(mv.route(MODEL)) == (1, None)  # the stable version serves alone
        assert "does not fit beside the stable version" in caplog.text
        assert "old version holds" in caplog.text
    finally:
        remove_canary(plan.model_repo, MODEL)


async def test_a_stable_version_loaded_with_its_canary_leaves_it_a_kv_share(
    plan: BuildPlan, engine: EngineClient
) -> None:
    """With a canary recorded at start-up and reduced KV caches accepted, the stable version is
    loaded leaving the canary its weight's share (canary_fit.share_kv): each Triton model's
    config carries its own kv_cache_free_gpu_mem_fraction (versions look like 16 GiB
    TensorRT-LLM engines on an 80 GiB GPU; the CPU engine ignores the parameter)."""
    assert plan.model_repo is not None
    write_canary(plan.model_repo, Canary(MODEL, 2, 10))
    policy = SwitchPolicy(reduced_min_ratio=0.5)
    mv = ModelVersions(
        plan.model_repo,
        engine,
        hardware=mf.Hardware(),
        switch_policy=policy,
        footprint_for_tests=as_gpu_engine,
    )
    try:
        assert (await mv.select_and_load())[MODEL].version == 1
        assert mv.route(MODEL) == Route(MODEL, 1, 2, 10, ALIAS)
        shared = share_kv(as_gpu_engine(None), as_gpu_engine(None), 10, policy)  # type: ignore[arg-type]
        assert shared is not None
        for name, want in ((MODEL, shared.stable), (ALIAS, shared.canary)):
            config = await engine.model_config(name)
            assert float(config.parameters[KV_FRACTION].string_value) == pytest.approx(want)
        assert mv.loaded[MODEL].kv_fraction == pytest.approx(shared.stable)
    finally:
        remove_canary(plan.model_repo, MODEL)
        await mv.select_and_load()  # the canary model unloaded
    assert served(mv.route(MODEL)) == (1, None)


@pytest.mark.timeout(900)
def test_split_over_2000_principals_through_the_facade(
    plan: BuildPlan, triton: TritonProcess, link: EngineLink, pki: DevPki, tmp_path: Path
) -> None:
    """2000 principals with a local token each, one request each (max_tokens=1) through the
    TLS + token façade: the trailers put 10 % ± 3 points on the canary, and a principal's
    second request gets the same version. Local tokens rather than a cheaper source: they are
    what a tenant holds in production; 2000 TokenStore.create calls (a file rewrite each) take
    ~55 s here, the requests about as long."""
    assert plan.model_repo is not None
    write_canary(plan.model_repo, Canary(MODEL, 2, 10))
    store = TokenStore(tmp_path / "tokens.json")
    tokens = [store.create(f"tenant-{i}", ["generate"])[0] for i in range(2000)]
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(),
        model_repository=plan.model_repo,
        engine_link=link,
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=store.path,
        metrics_listen=None,
    )
    facade = FacadeThread(settings)
    creds = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    request = pb.GenerateRequest(model=MODEL, prompt="Hi", sampling=pb.SamplingParams(max_tokens=1))
    try:
        with grpc.secure_channel(f"localhost:{facade.port}", creds) as channel:
            stub = pb_grpc.TextGenerationStub(channel)

            def version_for(token: str) -> str:
                _, call = stub.Generate.with_call(
                    request, timeout=120, metadata=(("authorization", f"Bearer {token}"),)
                )
                return dict(call.trailing_metadata() or ())["x-autoglm-model-version"]

            with ThreadPoolExecutor(4) as pool:
                answered = list(pool.map(version_for, tokens))
                again = list(pool.map(version_for, tokens[:50]))
    finally:
        facade.stop()
        remove_canary(plan.model_repo, MODEL)
    share = 100 * answered.count("2") / len(answered)
    print(f"canary share over 2000 principals at weight 10: {share:.2f} %")
    assert set(answered) == {"1", "2"} and abs(share - 10) <= 3, share
    assert again == answered[:50]  # sticky
