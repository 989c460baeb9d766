"""Security against the real façade: hostile bytes, scopes, models, expired certs, rotation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from autoglm.client import (
    AuthenticationError,
    Client,
    ClientConfig,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from autoglm.server.devstack.pki import (
    CLIENT_AUTH,
    SERVER_AUTH,
    DevPki,
    IssuedCertificate,
    client_spiffe_id,
    issue_certificate,
)
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.files import write_atomic
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.limits import PrincipalLimits
from autoglm.server.settings import Settings, TlsSettings

from .conftest import LONG_PROMPT, MODEL, VLM, Facade, FacadeThread, secure_channel

pytestmark = pytest.mark.integration

GENERATE = "/autoglm.v1.TextGeneration/Generate"
STREAM = "/autoglm.v1.TextGeneration/GenerateStream"


def _raw_call(channel: grpc.Channel, method: str, payload: bytes, token: str) -> None:
    md = [("authorization", f"Bearer {token}")]
    if method == STREAM:
        list(channel.unary_stream(method)(payload, metadata=md, timeout=10))
    else:
        channel.unary_unary(method)(payload, metadata=md, timeout=10)


@pytest.mark.parametrize("method", [GENERATE, STREAM])
@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # not protobuf at all
        b"\x0a\x02\xff\xfe",  # field 1 (model, string) holding invalid UTF-8
        b"\x0a\x10ab",  # length prefix longer than the message
    ],
    ids=["garbage", "invalid-utf8", "truncated"],
)
def test_malformed_bytes_are_invalid_argument(
    facade: Facade, pki: DevPki, token: str, method: str, payload: bytes
) -> None:
    with secure_channel(facade.endpoint, pki) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _raw_call(channel, method, payload, token)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        # The server is still fine afterwards.
        _raw_call(channel, "/autoglm.v1.TextGeneration/ListModels", b"", token)


def test_unknown_fields_are_ignored(facade: Facade, pki: DevPki, token: str) -> None:
    # model = MODEL, prompt = "Hi", plus field 99 (varint) that this API version does not know.
    body = b"\x0a" + bytes([len(MODEL)]) + MODEL.encode() + b"\x12\x02Hi" + b"\x98\x06\x01"
    body += b"\x22\x02\x08\x01"  # sampling { max_tokens: 1 }
    with secure_channel(facade.endpoint, pki) as channel:
        _raw_call(channel, GENERATE, body, token)


def test_scope_and_model_permissions(client_config: ClientConfig, token_store: TokenStore) -> None:
    reader, _ = token_store.create("reader", ["models:read"])
    other_model, _ = token_store.create("other", ["generate", "models:read"], models=["m2"])
    with Client(dataclasses.replace(client_config, token=reader)) as c:
        assert sorted(m.name for m in c.list_models()) == sorted([MODEL, VLM])
        with pytest.raises(PermissionDeniedError, match="generate"):
            c.generate("hi", max_tokens=1)
        with pytest.raises(PermissionDeniedError):
            list(c.generate_stream("hi", max_tokens=1))
    with Client(dataclasses.replace(client_config, token=other_model)) as c:
        assert c.list_models() == []  # only what the token may use is listed
        with pytest.raises(PermissionDeniedError, match="model"):
            c.generate("hi", model=MODEL, max_tokens=1)
        with pytest.raises(PermissionDeniedError):
            list(c.generate_stream("hi", model=MODEL, max_tokens=1))


def test_expired_and_revoked_tokens(client_config: ClientConfig, token_store: TokenStore) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    expired, _ = TokenStore(token_store.path, clock=lambda: past).create(
        "late", ["generate"], ttl=timedelta(hours=1)
    )
    revoked, record = token_store.create("gone", ["generate"])
    token_store.revoke(record.id)
    for secret, reason in ((expired, "expired"), (revoked, "revoked")):
        with Client(dataclasses.replace(client_config, token=secret)) as c:
            # The façade re-reads the store at most every reload_interval (0.5 s): until then
            # the new tokens are "unknown" (seen when this module runs alone, right after the
            # previous test's calls).
            deadline = time.monotonic() + 10
            while True:
                with pytest.raises(AuthenticationError) as refused:
                    c.generate("hi", max_tokens=1)
                if "unknown" not in str(refused.value) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert reason in str(refused.value)
            with pytest.raises(AuthenticationError, match=reason):
                list(c.generate_stream("hi", max_tokens=1))


def test_client_certificate_from_a_foreign_ca_is_refused(
    client_config: ClientConfig, pki: DevPki, tmp_path: Path
) -> None:
    foreign_ca = issue_certificate("foreign CA", is_ca=True)
    foreign = issue_certificate("intruder", issuer=foreign_ca, extended_key_usages=[CLIENT_AUTH])
    for name, cert in (("foreign", foreign),):
        _write_pair(tmp_path, name, cert)
        cfg = dataclasses.replace(
            client_config,
            client_cert=tmp_path / f"{name}.pem",
            client_key=tmp_path / f"{name}-key.pem",
        )
        with Client(cfg) as c, pytest.raises(UnavailableError):
            c.generate("hi", max_tokens=1, timeout=5)


def _write_pair(directory: Path, name: str, cert: IssuedCertificate) -> None:
    write_atomic(directory / f"{name}.pem", cert.cert_pem(), mode=0o644)
    write_atomic(directory / f"{name}-key.pem", cert.key_pem(), mode=0o600)


@dataclasses.dataclass
class RotationEnv:
    facade: FacadeThread
    dir: Path
    client_ca: IssuedCertificate
    server_ca_new: IssuedCertificate
    client: ClientConfig


@pytest.fixture
def rotation_env(
    tmp_path: Path,
    triton: TritonProcess,
    engine_link: EngineLink,
    token_store: TokenStore,
    token: str,
    model_dir: Path,
) -> Iterator[RotationEnv]:
    """A façade of its own whose server certificate files the test replaces."""
    old_ca = issue_certificate("server CA old", is_ca=True)
    new_ca = issue_certificate("server CA new", is_ca=True)
    client_ca = issue_certificate("client CA", is_ca=True)
    server = issue_certificate(
        "localhost", issuer=old_ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"],
        extended_key_usages=[SERVER_AUTH],
    )  # fmt: skip
    client = issue_certificate(
        "rotating-client", issuer=client_ca, extended_key_usages=[CLIENT_AUTH]
    )
    _write_pair(tmp_path, "server", server)
    _write_pair(tmp_path, "client", client)
    write_atomic(tmp_path / "client-ca.pem", client_ca.cert_pem(), mode=0o644)
    write_atomic(tmp_path / "old-ca.pem", old_ca.cert_pem(), mode=0o644)
    write_atomic(tmp_path / "new-ca.pem", new_ca.cert_pem(), mode=0o644)
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir),),
        tls=TlsSettings(
            cert=tmp_path / "server.pem",
            key=tmp_path / "server-key.pem",
            client_ca=tmp_path / "client-ca.pem",
        ),
        token_store=token_store.path,
        engine_link=engine_link,
        metrics_listen=None,  # not the default fixed port: suites may run side by side
    )
    thread = FacadeThread(settings)
    cfg = ClientConfig(
        endpoint=f"127.0.0.1:{thread.port}",
        ca_cert=tmp_path / "old-ca.pem",
        client_cert=tmp_path / "client.pem",
        client_key=tmp_path / "client-key.pem",
        token=token,
        model=MODEL,
    )
    try:
        yield RotationEnv(thread, tmp_path, client_ca, new_ca, cfg)
    finally:
        thread.stop()


def test_certificate_rotation_without_restart_keeps_live_streams(rotation_env: RotationEnv) -> None:
    env = rotation_env
    trusts_new = dataclasses.replace(env.client, ca_cert=env.dir / "new-ca.pem")
    with Client(trusts_new) as c, pytest.raises(UnavailableError):
        c.generate("hi", max_tokens=1, timeout=5)  # before rotation: the old certificate
    with Client(env.client) as old_client:
        stream = old_client.generate_stream(LONG_PROMPT, max_tokens=30, seed=1)
        first = next(stream)  # a live stream over the old certificate
        new_server = issue_certificate(
            "localhost", issuer=env.server_ca_new, dns_names=["localhost"],
            ip_addresses=["127.0.0.1"], extended_key_usages=[SERVER_AUTH],
        )  # fmt: skip
        # Key first, then certificate: the half-way state (new key, old cert) must be skipped.
        write_atomic(env.dir / "server-key.pem", new_server.key_pem(), mode=0o600)
        write_atomic(env.dir / "server.pem", new_server.cert_pem(), mode=0o644)
        with Client(trusts_new) as c:  # a new handshake gets the new certificate
            assert c.generate("The capital of France is", max_tokens=2).completion_tokens == 2
        rest = list(stream)  # the old connection's stream was not dropped
    assert sum(len(d.token_ids) for d in [first, *rest]) == 30
    with Client(env.client) as c, pytest.raises(UnavailableError):
        c.generate("hi", max_tokens=1, timeout=5)  # the old CA no longer matches


def test_invalid_argument_carries_field_violations(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        client.generate("hi", top_p=0.0, top_k=-1, repetition_penalty=3.0)
    fields = {f for f, _ in err.value.field_violations}
    assert fields == {"sampling.top_p", "sampling.top_k", "sampling.repetition_penalty"}


def test_expired_client_certificate_from_the_trusted_ca(
    rotation_env: RotationEnv, tmp_path: Path
) -> None:
    env = rotation_env
    past = datetime.now(UTC) - timedelta(days=30)
    expired = issue_certificate(
        "expired-client", issuer=env.client_ca, extended_key_usages=[CLIENT_AUTH],
        not_before=past, not_after=past + timedelta(days=1),
    )  # fmt: skip
    _write_pair(tmp_path, "expired", expired)
    with Client(env.client) as c:  # the valid certificate of the same CA works
        assert c.generate("The capital of France is", max_tokens=1).completion_tokens == 1
    stale = dataclasses.replace(
        env.client, client_cert=tmp_path / "expired.pem", client_key=tmp_path / "expired-key.pem"
    )
    with Client(stale) as c, pytest.raises(UnavailableError):
        c.generate("hi", max_tokens=1, timeout=5)


def test_token_bound_to_another_certificate(
    client_config: ClientConfig, token_store: TokenStore, pki: DevPki
) -> None:
    mine, _ = token_store.create(
        "bound-ok", ["generate"], bound_identity=client_spiffe_id(pki.client_name)
    )
    theirs, _ = token_store.create(
        "bound-other", ["generate"], bound_identity=client_spiffe_id("someone-else")
    )
    with Client(dataclasses.replace(client_config, token=mine)) as c:
        assert c.generate("The capital of France is", max_tokens=1).completion_tokens == 1
    with Client(dataclasses.replace(client_config, token=theirs)) as c:
        with pytest.raises(AuthenticationError, match="another client certificate"):
            c.generate("hi", max_tokens=1)
        with pytest.raises(AuthenticationError, match="another client certificate"):
            list(c.generate_stream("hi", max_tokens=1))


def test_over_limit_is_resource_exhausted_with_retry_info(
    client_config: ClientConfig, token_store: TokenStore
) -> None:
    one_stream, _ = token_store.create(
        "one-stream", ["generate"], limits=PrincipalLimits(max_streams=1)
    )
    with Client(dataclasses.replace(client_config, token=one_stream)) as c:
        stream = c.generate_stream(LONG_PROMPT, max_tokens=40, seed=1)
        next(stream)  # one request in flight
        with pytest.raises(ResourceExhaustedError, match="concurrent") as err:
            c.generate("hi", max_tokens=1)
        assert err.value.retry_after is not None and err.value.retry_after > 0
        with pytest.raises(ResourceExhaustedError):
            list(c.generate_stream("hi", max_tokens=1))
        assert sum(len(d.token_ids) for d in stream) == 39  # the admitted one completes

    two_per_minute, _ = token_store.create(
        "two-per-minute", ["generate"], limits=PrincipalLimits(requests_per_minute=2)
    )
    with Client(dataclasses.replace(client_config, token=two_per_minute)) as c:
        c.generate("hi", max_tokens=1)
        list(c.generate_stream("hi", max_tokens=1))
        with pytest.raises(ResourceExhaustedError, match="rate") as err:
            c.generate("hi", max_tokens=1)
        assert err.value.retry_after is not None and 0 < err.value.retry_after <= 60

    small, _ = token_store.create(
        "small-requests", ["generate"], limits=PrincipalLimits(max_tokens_per_request=4)
    )
    with Client(dataclasses.replace(client_config, token=small)) as c:
        assert c.generate("hi", max_tokens=4).completion_tokens <= 4
        with pytest.raises(ResourceExhaustedError, match="max_tokens"):
            c.generate("hi", max_tokens=8)
        with pytest.raises(ResourceExhaustedError, match="max_tokens"):
            list(c.generate_stream("hi", max_tokens=8))
