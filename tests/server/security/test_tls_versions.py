"""TLS 1.3 by default on the gRPC and HTTP ports; TLS 1.2 only with `--tls-min-version 1.2`.

Real TLS over loopback: a real grpc.aio server with the façade's credentials and interceptor (in
a child process, since grpc reads its cipher setting when first imported: security/tls.py), the
HTTP front door's `ssl.SSLContext`, and clients capped at TLS 1.2 by Python's ssl module. A gRPC
call over TLS 1.2 is made with h2 by hand, as no grpc client can be capped at TLS 1.2.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived

from autoglm.server.devstack.pki import CLIENT_AUTH, SERVER_AUTH, issue_certificate
from autoglm.server.security.tls import (
    GRPC_CIPHERS_ENV,
    GRPC_TLS13_ONLY_CIPHERS,
    TlsVersionInterceptor,
    accepts_tls12_handshake,
    grpc_handshake_environment,
    reloading_ssl_context,
)
from autoglm.server.settings import Settings, SettingsError, TlsSettings

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3

# The façade's gRPC TLS set-up, alone: its credentials, its TLS version interceptor, a health
# service to call. Prints the bound port once serving.
_GRPC_SERVER = """
import asyncio, sys
from pathlib import Path
import grpc
from grpc_health.v1 import health, health_pb2_grpc
from autoglm.server.security.tls import TlsVersionInterceptor, reloading_server_credentials

cert, key, ca, min_version = sys.argv[1:5]

async def main():
    server = grpc.aio.server(interceptors=[TlsVersionInterceptor(min_version)])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    creds, _ = reloading_server_credentials(Path(cert), Path(key), Path(ca))
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


class Pki:
    def __init__(self, root: Path) -> None:
        ca = issue_certificate("test CA", is_ca=True)
        leaf = issue_certificate(
            "localhost",
            issuer=ca,
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1"],
            extended_key_usages=[SERVER_AUTH],
        )
        client = issue_certificate("client", issuer=ca, extended_key_usages=[CLIENT_AUTH])
        self.ca_file, self.cert, self.key = root / "ca.pem", root / "cert.pem", root / "key.pem"
        self.client_cert, self.client_key = root / "client.pem", root / "client-key.pem"
        for path, pem in (
            (self.ca_file, ca.cert_pem()),
            (self.cert, leaf.cert_pem()),
            (self.key, leaf.key_pem()),
            (self.client_cert, client.cert_pem()),
            (self.client_key, client.key_pem()),
        ):
            path.write_bytes(pem)

    def client_context(self, maximum: ssl.TLSVersion, alpn: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.load_cert_chain(self.client_cert, self.client_key)
        ctx.maximum_version = maximum
        ctx.set_alpn_protocols([alpn])
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _grpc_server(pki: Pki, min_version: str, env: dict[str, str]) -> Iterator[int]:
    files = (pki.cert, pki.key, pki.ca_file)
    proc = subprocess.Popen(
        [sys.executable, "-c", _GRPC_SERVER, *map(str, files), min_version],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is listening (or has died)
        assert line.strip().isdigit(), f"the gRPC server did not start (exit {proc.poll()})"
        yield int(line)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _without_cipher_setting() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != GRPC_CIPHERS_ENV}


@pytest.fixture
def grpc_default(pki: Pki) -> Iterator[int]:
    """As `autoglm serve` runs it by default: TLS 1.3 minimum, grpc loaded with the setting."""
    env = grpc_handshake_environment("1.3", _without_cipher_setting())
    assert env is not None
    yield from _grpc_server(pki, "1.3", env)


@pytest.fixture
def grpc_tls12_allowed(pki: Pki) -> Iterator[int]:
    """`--tls-min-version 1.2`: grpc's own defaults, TLS 1.2 to 1.3."""
    yield from _grpc_server(pki, "1.2", _without_cipher_setting())


@pytest.fixture
def grpc_per_call_only(pki: Pki) -> Iterator[int]:
    """TLS 1.3 minimum, but grpc loaded without the cipher setting (the façade started from
    Python rather than `autoglm serve`): the handshake completes, the interceptor refuses."""
    yield from _grpc_server(pki, "1.3", _without_cipher_setting())


def handshake(port: int, ctx: ssl.SSLContext) -> str | None:
    """The negotiated version of a full TLS handshake (client certificate included)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version()


def health_check_over(port: int, ctx: ssl.SSLContext) -> tuple[str | None, dict[str, str]]:
    """One grpc.health.v1 Check written with h2 over `ctx`'s TLS; the negotiated version and
    the response's headers and trailers (grpc-status, grpc-message)."""
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    conn.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)  # an empty request message
    fields: dict[str, str] = {}
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived | TrailersReceived):
                    fields.update((str(k), str(v)) for k, v in event.headers)
                elif isinstance(event, DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded | StreamReset):
                    ended = True
            tls.sendall(conn.data_to_send())
        return tls.version(), fields


async def grpc_health(port: int, pki: Pki) -> int:
    """A real grpc client (TLS 1.3 as grpc negotiates it by default): the Check's status."""
    creds = grpc.ssl_channel_credentials(
        pki.ca_file.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return int(reply.status)


def test_grpc_refuses_a_tls12_client_at_the_handshake(pki: Pki, grpc_default: int) -> None:
    assert accepts_tls12_handshake("127.0.0.1", grpc_default) is False
    # Even with a valid client certificate: nothing to negotiate below TLS 1.3.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(grpc_default, pki.client_context(TLS12, "h2"))
    assert handshake(grpc_default, pki.client_context(TLS13, "h2")) == "TLSv1.3"


async def test_grpc_serves_tls13_clients_by_default(pki: Pki, grpc_default: int) -> None:
    assert await grpc_health(grpc_default, pki) == health_pb2.HealthCheckResponse.SERVING


def test_grpc_accepts_tls12_only_with_the_flag(pki: Pki, grpc_tls12_allowed: int) -> None:
    assert accepts_tls12_handshake("127.0.0.1", grpc_tls12_allowed) is True
    version, fields = health_check_over(grpc_tls12_allowed, pki.client_context(TLS12, "h2"))
    assert (version, fields.get("grpc-status")) == ("TLSv1.2", "0")


def test_a_call_over_tls12_is_refused_when_the_handshake_was_not(
    pki: Pki, grpc_per_call_only: int
) -> None:
    assert accepts_tls12_handshake("127.0.0.1", grpc_per_call_only) is True
    version, fields = health_check_over(grpc_per_call_only, pki.client_context(TLS12, "h2"))
    assert version == "TLSv1.2"
    assert fields.get("grpc-status") == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    assert "TLSv1.2 is refused" in fields.get("grpc-message", "")
    version, fields = health_check_over(grpc_per_call_only, pki.client_context(TLS13, "h2"))
    assert (version, fields.get("grpc-status")) == ("TLSv1.3", "0")


async def _http_handshake(port: int, ctx: ssl.SSLContext) -> str | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    version = writer.get_extra_info("ssl_object").version()
    assert await reader.read() == b"ok"
    writer.close()
    return str(version)


async def _http_versions(pki: Pki, **kwargs: str) -> dict[str, str | None]:
    ctx, _ = reloading_ssl_context(
        pki.cert, pki.key, pki.ca_file, require_client_cert=False, **kwargs
    )

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    seen: dict[str, str | None] = {}
    async with server:
        for name, maximum in (("1.2", TLS12), ("1.3", TLS13)):
            try:
                seen[name] = await _http_handshake(port, pki.client_context(maximum, "http/1.1"))
            except (ssl.SSLError, ConnectionResetError):
                seen[name] = None
    return seen


async def test_http_refuses_a_tls12_client_by_default(pki: Pki) -> None:
    assert await _http_versions(pki) == {"1.2": None, "1.3": "TLSv1.3"}


async def test_http_accepts_tls12_only_with_the_flag(pki: Pki) -> None:
    assert await _http_versions(pki, min_version="1.2") == {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}


def test_the_grpc_environment_is_only_added_when_needed() -> None:
    assert grpc_handshake_environment("1.3", {"PATH": "/bin"}) == {
        "PATH": "/bin",
        GRPC_CIPHERS_ENV: GRPC_TLS13_ONLY_CIPHERS,
    }
    assert grpc_handshake_environment("1.2", {"PATH": "/bin"}) is None
    # An operator's own cipher list is theirs; the start-up probe reports what it does.
    assert (
        grpc_handshake_environment("1.3", {GRPC_CIPHERS_ENV: "ECDHE-ECDSA-AES128-GCM-SHA256"})
        is None
    )


def test_the_interceptor_names_the_refused_version() -> None:
    versions = TlsVersionInterceptor("1.3")
    assert versions.refusal({"ssl_tls_version": [b"TLSv1.3"]}) is None
    assert versions.refusal({}) is None  # plaintext: not a TLS port (the health-only port)
    refusal = versions.refusal({"ssl_tls_version": [b"TLSv1.2"]})
    assert refusal == "tls: TLSv1.2 is refused; this server requires TLS 1.3 or later"
    assert TlsVersionInterceptor("1.2").refusal({"ssl_tls_version": [b"TLSv1.2"]}) is None


def test_settings_refuse_an_unknown_minimum(pki: Pki, tmp_path: Path) -> None:
    store = tmp_path / "tokens.json"
    store.write_text("{}")
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target="127.0.0.1:8001",
        models=(),
        tls=TlsSettings(pki.cert, pki.key, pki.ca_file, min_version="1.1"),
        token_store=store,
        model_repository=tmp_path,
    )
    with pytest.raises(SettingsError, match=r"tls\.min_version: '1\.1'"):
        settings.validate()
    assert TlsSettings(pki.cert, pki.key, pki.ca_file).min_version == "1.3"
