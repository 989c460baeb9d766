"""The façade's surroundings: security defaults, health, reflection, graceful shutdown."""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from autoglm.client import AuthenticationError, Client, ClientConfig, UnavailableError
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.security.bearer_tokens import TokenStore
from tests.support.serve_process import start_serve

from .conftest import MODEL, Facade, secure_channel

pytestmark = pytest.mark.integration


def test_call_without_token_is_unauthenticated(client_config: ClientConfig) -> None:
    with (
        Client(dataclasses.replace(client_config, token=None)) as anonymous,
        pytest.raises(AuthenticationError, match="missing bearer token"),
    ):
        anonymous.generate("hi", max_tokens=1)
    with (
        Client(dataclasses.replace(client_config, token="agm_000000000000_bogus")) as bogus,
        pytest.raises(AuthenticationError),
    ):
        list(bogus.generate_stream("hi", max_tokens=1))


def test_call_without_client_certificate_is_refused(client_config: ClientConfig) -> None:
    no_cert = dataclasses.replace(client_config, client_cert=None, client_key=None)
    with Client(no_cert) as c, pytest.raises(UnavailableError):
        c.generate("hi", max_tokens=1, timeout=5)


def test_plaintext_is_refused(facade: Facade) -> None:
    with grpc.insecure_channel(facade.endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_is_open_and_serving(facade: Facade, pki: DevPki) -> None:
    """No token needed; SERVING once the first health round has seen a token (NOT_SERVING
    until then: when this module runs first, the façade has only just started)."""
    with secure_channel(facade.endpoint, pki) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        for service in ("", "autoglm.v1.TextGeneration"):
            while True:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
                assert time.monotonic() < deadline, f"{service!r} never became SERVING"
                time.sleep(0.1)


def test_reflection_lists_the_api_with_a_token(facade: Facade, pki: DevPki, token: str) -> None:
    with secure_channel(facade.endpoint, pki) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(
            iter([request]), metadata=[("authorization", f"Bearer {token}")], timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"autoglm.v1.TextGeneration", "grpc.health.v1.Health"} <= names


def test_sigterm_drains_in_flight_streams(
    triton: TritonProcess,
    pki: DevPki,
    token_store: TokenStore,
    client_config: ClientConfig,
    model_dir: Path,
    tmp_path: Path,
    engine_link: EngineLink,
) -> None:
    """SIGTERM: new calls are refused, the stream in flight still completes, exit code 0."""
    tls = engine_link.tls
    assert tls is not None
    secret_file = engine_link.write_secret(tmp_path / "triton-secret")
    serve = start_serve(
        triton_target=triton.grpc_target,
        model=MODEL,
        model_dir=model_dir,
        pki=pki,
        token_store=token_store,
        link_flags=[
            *("--triton-ca", str(tls.ca_cert), "--triton-cert", str(tls.client_cert)),
            *("--triton-key", str(tls.client_key), "--triton-secret-file", str(secret_file)),
        ],
        grace_s=30,
    )
    proc, port, log = serve.proc, serve.port, serve.log
    try:
        with Client(dataclasses.replace(client_config, endpoint=f"127.0.0.1:{port}")) as c:
            stream = c.generate_stream(
                "Once upon a time, in a land far away,", max_tokens=40, seed=1
            )
            first = next(stream)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while not any("shutting down" in line for line in log):
                assert time.monotonic() < deadline, "no shutdown after SIGTERM"
                time.sleep(0.02)
            with pytest.raises(UnavailableError):
                c.generate("hi", max_tokens=1, timeout=5)
            rest = list(stream)
        assert rest[-1].finish_reason == "length"
        assert sum(len(d.token_ids) for d in [first, *rest]) == 40
        assert proc.wait(30) == 0
    finally:
        serve.stop()


def _model_metadata(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> object:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    return stub.ModelMetadata(
        service_pb2.ModelMetadataRequest(name=MODEL), metadata=metadata, timeout=5
    )


def test_triton_accepts_only_the_facade(
    triton: TritonProcess, engine_link: EngineLink, pki: DevPki
) -> None:
    """Triton: TLS with the link's own CA, and the restricted-protocol secret on every call."""
    creds = engine_link.channel_credentials()
    with grpc.secure_channel(triton.grpc_target, creds) as channel:
        assert _model_metadata(channel, engine_link.metadata()).name == MODEL  # the façade's way
        with pytest.raises(grpc.RpcError) as no_secret:
            _model_metadata(channel)
        assert "restricted" in (no_secret.value.details() or "").lower()
        wrong = ((engine_link.metadata()[0][0], "not-the-secret"),)
        with pytest.raises(grpc.RpcError):
            _model_metadata(channel, wrong)
    with grpc.insecure_channel(triton.grpc_target) as plaintext, pytest.raises(grpc.RpcError):
        _model_metadata(plaintext, engine_link.metadata())
    # A caller's client certificate (the façade's CA) does not open Triton.
    assert engine_link.tls is not None
    caller = grpc.ssl_channel_credentials(
        engine_link.tls.ca_cert.read_bytes(),
        pki.client_key.read_bytes(),
        pki.client_cert.read_bytes(),
    )
    with grpc.secure_channel(triton.grpc_target, caller) as channel, pytest.raises(grpc.RpcError):
        _model_metadata(channel, engine_link.metadata())


def test_plaintext_health_port_serves_health_only(facade: Facade, token: str) -> None:
    port = facade.thread.running.health_port
    assert port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/autoglm.v1.TextGeneration/ListModels")(
                b"", metadata=[("authorization", f"Bearer {token}")], timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
