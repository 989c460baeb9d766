"""Auth end to end: a real grpc.aio server with mTLS (dev PKI) and the token interceptor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from autoglm.server.devstack.pki import CLIENT_AUTH, DevPki, ensure_dev_pki, issue_certificate
from autoglm.server.security.auth import DEFAULT_METHOD_SCOPES, AuthInterceptor, current_principal
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.tls import server_credentials
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

CLIENT_NAME = "test-client"
CLIENT_ID = f"spiffe://autoglm.dev/client/{CLIENT_NAME}"
ECHO = "/autoglm.test.Echo/"


def _whoami() -> str:
    principal = current_principal()
    return "<none>" if principal is None else f"{principal.name}|{principal.cert_identity}"


class _TextGeneration(pb_grpc.TextGenerationServicer):
    """Stands in for the real servicer: answers with who the interceptor said is calling."""

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        return pb.GenerateResponse(model=request.model, text=_whoami())

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        for _ in range(2):
            yield pb.GenerateResponse(model=request.model, text=_whoami())
            await asyncio.sleep(0)


async def _drain(requests: AsyncIterator[bytes]) -> None:
    async for _ in requests:
        pass


async def _stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
    await _drain(requests)
    return _whoami().encode()


async def _stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield _whoami().encode()


def _sync_unary(request: bytes, context: Any) -> bytes:
    return _whoami().encode()


def _sync_stream(request: bytes, context: Any) -> Iterator[bytes]:
    yield _whoami().encode()
    yield _whoami().encode()


async def _async_unary(request: bytes, context: Any) -> bytes:
    return _whoami().encode()


ECHO_KINDS = ("UnaryUnary", "StreamUnary", "StreamStream", "SyncUnaryUnary", "SyncUnaryStream")

# Raw-bytes service covering all four RPC kinds, async and sync (no serializers: bytes in/out).
_ECHO_HANDLERS = grpc.method_handlers_generic_handler(
    "autoglm.test.Echo",
    {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(_async_unary),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream),
        "SyncUnaryUnary": grpc.unary_unary_rpc_method_handler(_sync_unary),
        "SyncUnaryStream": grpc.unary_stream_rpc_method_handler(_sync_stream),
    },
)


@dataclass(frozen=True)
class Env:
    pki: DevPki
    tokens_path: Path
    port: int
    alice: str  # valid
    expired: str
    to_revoke: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest_asyncio.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("auth")
    pki = ensure_dev_pki(root / "pki", client_name=CLIENT_NAME)
    tokens_path = root / "tokens.json"
    admin = TokenStore(tokens_path)
    alice, _ = admin.create("alice", {"generate"})
    to_revoke, _ = admin.create("carol", {"generate"})
    past = datetime.now(UTC) - timedelta(hours=2)
    expired, _ = TokenStore(tokens_path, clock=lambda: past).create(
        "bob", {"generate"}, ttl=timedelta(hours=1)
    )

    server = grpc.aio.server(
        interceptors=[
            AuthInterceptor(
                TokenStore(tokens_path),
                method_scopes={
                    **DEFAULT_METHOD_SCOPES,
                    **{f"/autoglm.test.Echo/{kind}": "generate" for kind in ECHO_KINDS},
                },
            )
        ],
        migration_thread_pool=ThreadPoolExecutor(max_workers=2),  # runs the sync handlers
    )
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    pb_grpc.add_TextGenerationServicer_to_server(_TextGeneration(), server)
    server.add_generic_rpc_handlers((_ECHO_HANDLERS,))
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.server_cert, pki.server_key, pki.ca_cert)
    )
    await server.start()
    try:
        yield Env(pki, tokens_path, port, alice, expired, to_revoke)
    finally:
        await server.stop(None)


def _tls(
    pki: DevPki, *, cert: bytes | None = None, key: bytes | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pki.client_key.read_bytes() if key is None else key,
        certificate_chain=pki.client_cert.read_bytes() if cert is None else cert,
    )


@pytest_asyncio.fixture(scope="module")
async def channel(env: Env) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.secure_channel(env.target, _tls(env.pki)) as ch:
        await asyncio.wait_for(ch.channel_ready(), timeout=10)
        yield ch


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _generate(channel: grpc.aio.Channel, metadata: Any = None) -> str:
    stub = pb_grpc.TextGenerationStub(channel)
    response = await stub.Generate(pb.GenerateRequest(model="m"), metadata=metadata, timeout=5)
    return response.text


async def _generate_stream(channel: grpc.aio.Channel, metadata: Any = None) -> list[str]:
    stub = pb_grpc.TextGenerationStub(channel)
    call = stub.GenerateStream(pb.GenerateRequest(model="m"), metadata=metadata, timeout=5)
    return [r.text async for r in call]


async def test_valid_token_reaches_unary_and_streaming_handlers(
    env: Env, channel: grpc.aio.Channel
) -> None:
    expected = f"alice|{CLIENT_ID}"
    assert await _generate(channel, _bearer(env.alice)) == expected
    assert await _generate_stream(channel, _bearer(env.alice)) == [expected, expected]


async def test_composed_channel_credentials(env: Env) -> None:
    # mTLS + bearer token on the channel, as a client library would set it up (style item 5).
    creds = grpc.composite_channel_credentials(
        _tls(env.pki), grpc.access_token_call_credentials(env.alice)
    )
    async with grpc.aio.secure_channel(env.target, creds) as ch:
        await asyncio.wait_for(ch.channel_ready(), timeout=10)
        assert await _generate(ch) == f"alice|{CLIENT_ID}"


@pytest.mark.parametrize(
    ("make_metadata", "reason"),
    [
        (lambda env: None, "missing"),
        (lambda env: (("authorization", "Bearer "),), "missing"),
        (lambda env: _bearer("garbage"), "malformed"),
        (lambda env: (("authorization", f"Basic {env.alice}"),), "malformed"),
        (lambda env: _bearer(f"agm_{'0' * 12}_{env.alice.split('_', 2)[2]}"), "unknown"),
        (lambda env: _bearer(env.expired), "expired"),
    ],
    ids=["none", "empty", "garbage", "basic-scheme", "unknown", "expired"],
)
async def test_refused_tokens(
    env: Env, channel: grpc.aio.Channel, make_metadata: Any, reason: str
) -> None:
    metadata = make_metadata(env)
    for call in (_generate, _generate_stream):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(channel, metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details = info.value.details() or ""
        assert reason in details
        for token in (env.alice, env.expired):
            assert token.split("_", 2)[2] not in details
            assert token not in details


async def test_every_rpc_kind_is_guarded_and_sees_the_principal(
    env: Env, channel: grpc.aio.Channel
) -> None:
    def requests(md: object) -> Iterator[bytes]:
        # A refused call sends no messages: the server aborts before reading any, and a client
        # still writing then fails on its own side ("Internal error from Core", a client race)
        # instead of reporting the server's UNAUTHENTICATED.
        if md is not None:
            yield b"a"
            yield b"b"

    expected = f"alice|{CLIENT_ID}".encode()
    calls = {
        "UnaryUnary": lambda md: channel.unary_unary(ECHO + "UnaryUnary")(b"x", metadata=md),
        "SyncUnaryUnary": lambda md: channel.unary_unary(ECHO + "SyncUnaryUnary")(
            b"x", metadata=md
        ),
        "StreamUnary": lambda md: channel.stream_unary(ECHO + "StreamUnary")(
            requests(md), metadata=md
        ),
    }
    for name, call in calls.items():
        assert await call(_bearer(env.alice)) == expected, name
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(None)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name

    streams = {
        "SyncUnaryStream": lambda md: channel.unary_stream(ECHO + "SyncUnaryStream")(
            b"x", metadata=md
        ),
        "StreamStream": lambda md: channel.stream_stream(ECHO + "StreamStream")(
            requests(md), metadata=md
        ),
    }
    for name, stream in streams.items():
        assert [r async for r in stream(_bearer(env.alice))] == [expected, expected], name
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in stream(None)]
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name


async def test_revocation_by_another_process_takes_effect(
    env: Env, channel: grpc.aio.Channel
) -> None:
    assert await _generate(channel, _bearer(env.to_revoke)) == f"carol|{CLIENT_ID}"
    record_id = env.to_revoke.split("_", 2)[1]
    TokenStore(env.tokens_path).revoke(record_id)  # a second store on the same file (the CLI)

    deadline = time.monotonic() + 2.0
    while True:
        try:
            await _generate(channel, _bearer(env.to_revoke))
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in (err.details() or "")
            break
        assert time.monotonic() < deadline, "revocation not seen within 2 s"
        await asyncio.sleep(0.05)  # polling for the reload, not waiting for start-up
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _generate_stream(channel, _bearer(env.to_revoke))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_needs_no_token(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


async def _expect_transport_failure(target: str, channel: grpc.aio.Channel) -> None:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_no_client_certificate_is_refused(env: Env) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=env.pki.ca_cert.read_bytes())
    await _expect_transport_failure(env.target, grpc.aio.secure_channel(env.target, creds))


async def test_client_certificate_from_a_foreign_ca_is_refused(env: Env) -> None:
    foreign_ca = issue_certificate("foreign CA", is_ca=True)
    client = issue_certificate(
        CLIENT_NAME,
        issuer=foreign_ca,
        uris=[CLIENT_ID],  # same identity, wrong issuer
        extended_key_usages=[CLIENT_AUTH],
    )
    creds = _tls(env.pki, cert=client.cert_pem(), key=client.key_pem())
    await _expect_transport_failure(env.target, grpc.aio.secure_channel(env.target, creds))


async def test_plaintext_is_refused(env: Env) -> None:
    await _expect_transport_failure(env.target, grpc.aio.insecure_channel(env.target))
