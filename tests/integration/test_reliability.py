"""Engine failure: Triton killed mid-stream, then back — the façade fails fast and recovers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.client import Client, ClientConfig, UnavailableError
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import SHM_DIR, TritonOptions, TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings import Settings, TlsSettings
from autoglm.triton_models.repository import CpuEngineConfig, render_cpu_model

from .conftest import LONG_PROMPT, MODEL, FacadeThread, secure_channel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclasses.dataclass
class Env:
    options: TritonOptions
    triton: TritonProcess
    facade: FacadeThread
    client: ClientConfig


@pytest.fixture
def env(
    tmp_path: Path,
    model_dir: Path,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    client_config: ClientConfig,
) -> Iterator[Env]:
    """A Triton and a façade of their own: this test kills the Triton."""
    repo = tmp_path / "model_repository"
    render_cpu_model(repo, CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir))
    first = TritonProcess(
        TritonOptions(model_repository=repo, models=(MODEL,), exit_timeout_s=2, link=engine_link)
    )
    # Same ports on restart, as a restarted pod behind the same Service would have.
    options = dataclasses.replace(
        first.options,
        grpc_port=first.grpc_port,
        http_port=first.http_port,
        metrics_port=first.metrics_port,
    )
    first.start()
    facade = FacadeThread(
        Settings(
            listen="127.0.0.1:0",
            triton_target=first.grpc_target,
            models=(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir),),
            tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
            token_store=token_store.path,
            engine_link=engine_link,
            health_interval_s=0.25,
            metrics_listen=None,
        )
    )
    e = Env(
        options,
        first,
        facade,
        dataclasses.replace(client_config, endpoint=f"127.0.0.1:{facade.port}"),
    )
    try:
        yield e
    finally:
        facade.stop()
        e.triton.stop()


def _health(env: Env, pki: DevPki) -> int:
    with secure_channel(env.client.endpoint, pki) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _wait(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until predicate() held; fails after timeout."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_engine_killed_mid_stream_then_recovers(env: Env, pki: DevPki) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _wait(lambda: _health(env, pki) == serving, 10) >= 0
    with Client(env.client) as c:
        stream = c.generate_stream(LONG_PROMPT, max_tokens=400, seed=1)
        next(stream)
        regions = f"{env.triton.shm_prefix}*"  # the python backend's, named by our prefix
        assert list(SHM_DIR.glob(regions))
        env.triton.kill()  # SIGKILL mid-stream
        killed = time.monotonic()
        assert not list(SHM_DIR.glob(regions))  # not left in /dev/shm by the killed Triton
        with pytest.raises(UnavailableError):
            for _ in stream:
                pass
        assert time.monotonic() - killed < 2.0  # the open stream ends at once, no hang
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            c.generate("hi", max_tokens=1, timeout=10)
        assert time.monotonic() - started < 2.0  # new calls fail fast
        _wait(lambda: _health(env, pki) != serving, 5)  # readiness turns off

        env.triton = TritonProcess(env.options)
        env.triton.start()  # back on the same address
        recovered = _wait(lambda: _health(env, pki) == serving, 5)

        def answers() -> bool:
            try:
                return c.generate("The capital of France is", max_tokens=1).completion_tokens == 1
            except (UnavailableError, grpc.RpcError):
                return False

        recovered += _wait(answers, 5)
    assert recovered < 5.0
