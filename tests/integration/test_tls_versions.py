"""TLS 1.3 by default on the real façade's ports; TLS 1.2 only with `--tls-min-version 1.2`.

Two ways the façade runs: in-process (the package's `facade`, started from Python after grpc was
imported: the gRPC handshake may complete at TLS 1.2 and each call is then refused), and as
`autoglm serve` (a child process that restarts itself with grpc limited to TLS 1.3 handshakes,
security/tls.py): there the gRPC port refuses a TLS 1.2 client at the handshake, and its own
link to Triton (a grpc client under the same limit) still works, which deep health proves.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.tls import GRPC_CIPHERS_ENV, accepts_tls12_handshake
from tests.integration.conftest import MODEL, Facade, secure_channel
from tests.server.security.test_tls_versions import health_check_over

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


def client_context(pki: DevPki, maximum: ssl.TLSVersion, alpn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    ctx.maximum_version = maximum
    ctx.set_alpn_protocols([alpn])
    return ctx


def http_version(port: int, pki: DevPki, maximum: ssl.TLSVersion) -> str | None:
    """The version a handshake with the HTTP port negotiates; None if it is refused."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_context(pki, maximum, "http/1.1").wrap_socket(
                raw, server_hostname="localhost"
            ) as tls,
        ):
            return tls.version()
    except (ssl.SSLError, ConnectionResetError):
        return None


def test_the_http_port_refuses_a_tls12_client(facade: Facade, pki: DevPki) -> None:
    port = facade.thread.running.openai_port
    assert port is not None
    assert http_version(port, pki, TLS12) is None
    assert http_version(port, pki, TLS13) == "TLSv1.3"


def test_a_grpc_call_over_tls12_is_refused(facade: Facade, pki: DevPki) -> None:
    # In-process, grpc was imported before any cipher setting: the handshake completes, and
    # the call is refused before its token is looked at.
    version, fields = health_check_over(facade.port, client_context(pki, TLS12, "h2"))
    assert version == "TLSv1.2"
    assert fields.get("grpc-status") == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    assert "TLSv1.2 is refused" in fields.get("grpc-message", "")
    version, fields = health_check_over(facade.port, client_context(pki, TLS13, "h2"))
    assert (version, fields.get("grpc-status")) == ("TLSv1.3", "0")


class ServeProcess:
    """`autoglm serve` in a child process, with its ports read from its log."""

    def __init__(self, args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k != GRPC_CIPHERS_ENV}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoglm.server.cli", "--log-format", "text", "serve", *args],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        try:
            found = self._wait_for(
                port=r"façade listening on port (\d+)",
                openai_port=r"OpenAI-compatible API on https://[^:]+:(\d+)",
            )
        except BaseException:  # incl. a test timeout: a fixture that fails never tears down
            self.proc.kill()
            self.proc.wait()
            raise
        self.port, self.openai_port = found["port"], found["openai_port"]
        # Keep reading, so the child never blocks on a full pipe.
        threading.Thread(target=self.log.extend, args=(self.proc.stderr,), daemon=True).start()

    def _wait_for(self, **patterns: str) -> dict[str, int]:
        """The numbers these log lines carry, in whatever order they come."""
        assert self.proc.stderr is not None
        found: dict[str, int] = {}
        for line in self.proc.stderr:  # blocks on the child's log until the lines appear
            self.log.append(line)
            for name, pattern in patterns.items():
                if match := re.search(pattern, line):
                    found[name] = int(match.group(1))
            if len(found) == len(patterns):
                return found
        raise AssertionError(f"`autoglm serve` exited {self.proc.wait()}:\n{''.join(self.log)}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _serve(
    tmp_path: Path,
    triton: TritonProcess,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    model_dir: Path,
    *extra: str,
) -> ServeProcess:
    assert engine_link.tls is not None
    secret = tmp_path / "triton-secret"
    secret.write_text(engine_link.secret)
    return ServeProcess(
        [
            "--listen=127.0.0.1:0",
            f"--triton={triton.grpc_target}",
            f"--model={MODEL}={MODEL}:{model_dir}",
            f"--tls-cert={pki.server_cert}",
            f"--tls-key={pki.server_key}",
            f"--client-ca={pki.ca_cert}",
            f"--token-store={token_store.path}",
            f"--triton-ca={engine_link.tls.ca_cert}",
            f"--triton-cert={engine_link.tls.client_cert}",
            f"--triton-key={engine_link.tls.client_key}",
            f"--triton-secret-file={secret}",
            "--openai-listen=127.0.0.1:0",
            "--metrics-listen=",
            "--health-interval=0.5",
            *extra,
        ]
    )


@pytest.fixture
def serve_default(
    tmp_path: Path,
    triton: TritonProcess,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    model_dir: Path,
) -> Iterator[ServeProcess]:
    serve = _serve(tmp_path, triton, engine_link, pki, token_store, model_dir)
    yield serve
    serve.stop()


@pytest.fixture
def serve_tls12(
    tmp_path: Path,
    triton: TritonProcess,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    model_dir: Path,
) -> Iterator[ServeProcess]:
    serve = _serve(
        tmp_path, triton, engine_link, pki, token_store, model_dir, "--tls-min-version=1.2"
    )
    yield serve
    serve.stop()


def _wait_serving(port: int, pki: DevPki, timeout_s: float = 60) -> None:
    """Deep health SERVING: the façade generated through its (TLS 1.3) link to Triton."""
    deadline = time.monotonic() + timeout_s
    with secure_channel(f"localhost:{port}", pki) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            assert time.monotonic() < deadline, "the façade never became SERVING"
            time.sleep(0.2)


def test_autoglm_serve_refuses_tls12_at_the_handshake(
    serve_default: ServeProcess, pki: DevPki
) -> None:
    assert accepts_tls12_handshake("127.0.0.1", serve_default.port) is False
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        health_check_over(serve_default.port, client_context(pki, TLS12, "h2"))
    assert http_version(serve_default.openai_port, pki, TLS12) is None
    assert http_version(serve_default.openai_port, pki, TLS13) == "TLSv1.3"
    _wait_serving(serve_default.port, pki)


def test_autoglm_serve_accepts_tls12_only_with_the_flag(
    serve_tls12: ServeProcess, pki: DevPki
) -> None:
    assert accepts_tls12_handshake("127.0.0.1", serve_tls12.port) is True
    version, fields = health_check_over(serve_tls12.port, client_context(pki, TLS12, "h2"))
    assert (version, fields.get("grpc-status")) == ("TLSv1.2", "0")
    assert http_version(serve_tls12.openai_port, pki, TLS12) == "TLSv1.2"
