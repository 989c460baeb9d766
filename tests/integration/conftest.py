"""Fixtures shared by the whole test run: the real Triton with the real model, and the real
façade (mTLS + token).

Triton is the `tritonserver` binary from nvidia-pytriton hosting the CPU reference engine with
SmolLM2-135M-Instruct. The façade runs in its own thread with its own event loop, so the sync
client and async tests can both call it; it binds port 0 and the bound port is used.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from autoglm.client import AsyncClient, Client, ClientConfig
from autoglm.server.app import RunningServer, start_server
from autoglm.server.devstack.links import dev_engine_link
from autoglm.server.devstack.pki import DevPki, ensure_dev_pki
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings import Settings, TlsSettings
from autoglm.server.telemetry import tracing
from autoglm.server.telemetry.tracing import TracingSettings
from autoglm.triton_models.repository import (
    CpuEngineConfig,
    CpuVlConfig,
    render_cpu_model,
    render_cpu_vl_model,
)
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.triton_crashes import CrashScanner

MODEL = "smollm2-135m-instruct"
VLM = "glm-4.1v-tiny-random"  # served by the CPU engine of the vLLM contract, with images
# Sampled with seed 1, the model goes on for hundreds of tokens after this.
LONG_PROMPT = "Once upon a time, in a land far away,"
T = TypeVar("T")

# ---- Triton crashes (tests/support/triton_crashes.py) -------------------------------------------
# A test that fails while a Triton of this run logged a crash gets the crash lines attached to
# its report and listed in the summary, so "UNAVAILABLE" reads as "Triton died". Nothing is
# retried: a crash here was once our own bug (unsynchronized custom-metric updates in the CPU
# engine, docs/reliability.md), and a retry would have hidden it.
_SCANNER = pytest.StashKey[CrashScanner]()
_CRASHED = pytest.StashKey[list[str]]()


def _scanner(config: pytest.Config) -> CrashScanner:
    if _SCANNER not in config.stash:
        base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        config.stash[_SCANNER] = CrashScanner(base)
    return config.stash[_SCANNER]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    crashes = _scanner(item.config).scan()  # lines logged since the previous phase's scan
    if crashes and report.failed:
        report.sections.append(("Triton crashed during this test", "\n".join(crashes)))
        item.config.stash.setdefault(_CRASHED, []).append(
            f"{item.nodeid} ({report.when}): {'; '.join(crashes[:2])}"
        )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    crashed = config.stash.get(_CRASHED, [])
    if crashed:
        terminalreporter.section("failed while a Triton of this run crashed")
        for line in crashed:
            terminalreporter.write_line(line)


@pytest.fixture(scope="package")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="package")
def token_store(tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    return TokenStore(tmp_path_factory.mktemp("tokens") / "tokens.json")


@pytest.fixture(scope="package")
def token(token_store: TokenStore) -> str:
    secret, _ = token_store.create("integration-tests", ["generate", "models:read"])
    return secret


@pytest.fixture(scope="package")
def otlp() -> Iterator[OtlpReceiver]:
    """TEST STAND-IN for Jaeger/Tempo (none can be installed here): collects OTLP spans."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="package")
def tracing_on(otlp: OtlpReceiver) -> Iterator[None]:
    """The façade's tracing, exporting each span at once to the stand-in receiver."""
    tracing.shutdown_tracing()
    tracing.setup_tracing(
        TracingSettings(
            endpoint=otlp.grpc_endpoint,
            protocol="grpc",
            insecure=True,
            batch=False,
            service_name="autoglm-facade",
        )
    )
    yield
    tracing.shutdown_tracing()


@pytest.fixture(scope="package")
def engine_link(tmp_path_factory: pytest.TempPathFactory) -> EngineLink:
    """Triton's own mTLS (a separate CA) and restricted-protocol secret, as in production."""
    return dev_engine_link(tmp_path_factory.mktemp("pki-engine"))


@pytest.fixture(scope="package")
def triton(
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    vlm_dir: Path,
    engine_link: EngineLink,
    otlp: OtlpReceiver,
) -> Iterator[TritonProcess]:
    repo = tmp_path_factory.mktemp("triton") / "model_repository"
    render_cpu_model(
        repo, CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir, max_concurrency=4)
    )
    render_cpu_vl_model(repo, CpuVlConfig(model_name=VLM, hf_model_dir=vlm_dir, max_concurrency=4))
    proc = TritonProcess(
        TritonOptions(
            model_repository=repo,
            models=(MODEL, VLM),
            exit_timeout_s=5,
            link=engine_link,
            trace_url=otlp.triton_url,
        )
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _revive_crashed_triton(request: pytest.FixtureRequest) -> None:
    """A package Triton that died in an earlier test (a crash) is started again on its
    ports, and the package façade is given time to see it, so one crash fails one test."""
    if "triton" not in request.fixturenames:
        return
    proc = request.getfixturevalue("triton")  # modules may override it with their own
    if not isinstance(proc, TritonProcess) or proc.running:
        return
    proc.stop()  # reap it and its orphaned stubs
    proc.start()
    if "facade" in request.fixturenames:
        running = request.getfixturevalue("facade").thread.running
        _wait_serving(f"127.0.0.1:{running.health_port}", timeout_s=30)


def _wait_serving(health_endpoint: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(health_endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "the façade did not see the restarted Triton"
            time.sleep(0.1)


class FacadeThread:
    """The façade on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.running: RunningServer = self.run(start_server(settings))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self) -> None:
        self.run(self.running.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass(frozen=True)
class Facade:
    port: int
    endpoint: str
    thread: FacadeThread
    settings: Settings

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.thread.running.metrics_port}/metrics"


@pytest.fixture(scope="package")
def facade(
    triton: TritonProcess,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    token: str,
    model_dir: Path,
    vlm_dir: Path,
    tracing_on: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Facade]:
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(
            ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir),
            ModelSpec(name=VLM, triton_model=VLM, tokenizer_dir=vlm_dir, engine="cpu_reference_vl"),
        ),
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=token_store.path,
        engine_link=engine_link,
        health_interval_s=0.5,
        metrics_listen="127.0.0.1:0",
        health_listen="127.0.0.1:0",
        audit_dir=tmp_path_factory.mktemp("audit"),
        openai_listen="127.0.0.1:0",
    )
    thread = FacadeThread(settings)
    try:
        yield Facade(thread.port, f"127.0.0.1:{thread.port}", thread, settings)
    finally:
        thread.stop()


@pytest.fixture(scope="package")
def client_config(facade: Facade, pki: DevPki, token: str) -> ClientConfig:
    return ClientConfig(
        endpoint=facade.endpoint,
        ca_cert=pki.ca_cert,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        token=token,
        model=MODEL,
    )


@pytest.fixture(scope="package")
def client(client_config: ClientConfig) -> Iterator[Client]:
    with Client(client_config) as c:
        yield c


@pytest.fixture
async def aclient(client_config: ClientConfig) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(client_config) as c:
        yield c


def engine_metric(triton: TritonProcess, name: str, **labels: str) -> float:
    """Sum of a counter in Triton's own /metrics endpoint (the engine model's custom metrics)."""
    return scrape(triton.metrics_url, name, **labels)


def scrape(url: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` with these labels at a Prometheus endpoint."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # The parser names counter samples `<family>_total` even where the exposition (e.g.
            # Triton's nv_inference_request_success) has no such suffix.
            if sample.name in (name, f"{name}_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def secure_channel(endpoint: str, pki: DevPki, *, with_cert: bool = True) -> grpc.Channel:
    key = pki.client_key.read_bytes() if with_cert else None
    chain = pki.client_cert.read_bytes() if with_cert else None
    creds = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), key, chain)
    return grpc.secure_channel(endpoint, creds)


def audited(facade: Facade, *request_ids: str) -> dict[str, dict[str, Any]]:
    """The audit records of these requests, once all are written (waited for, not slept)."""
    audit_dir = facade.settings.audit_dir
    assert audit_dir is not None
    deadline = time.monotonic() + 10
    while True:
        # Each call's record is queued when the call ends; the writer's next task runs after it.
        facade.thread.running.generations.audit.flush(timeout=10)
        lines = (audit_dir / "audit.jsonl").read_text().splitlines()
        records = {r["request_id"]: r for r in map(json.loads, lines)}
        if set(request_ids) <= set(records):
            return records
        assert time.monotonic() < deadline, f"no audit record for {request_ids}"
        time.sleep(0.05)
