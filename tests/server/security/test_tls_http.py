"""The HTTP front door's TLS context: rotation without restart, optional and required client
certificates, and the caller identity the gRPC side would see. Real TLS over loopback sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from autoglm.server.devstack.pki import (
    CLIENT_AUTH,
    SERVER_AUTH,
    IssuedCertificate,
    client_spiffe_id,
    issue_certificate,
)
from autoglm.server.security.tls import peer_identity_of_cert, reloading_ssl_context


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca = issue_certificate("test CA", is_ca=True)
        self.ca_file = root / "ca.pem"
        self.ca_file.write_bytes(self.ca.cert_pem())
        self.cert, self.key = root / "server.pem", root / "server-key.pem"
        self.client = issue_certificate(
            "client",
            issuer=self.ca,
            uris=[client_spiffe_id("c1")],
            extended_key_usages=[CLIENT_AUTH],
        )
        self.client_cert, self.client_key = root / "client.pem", root / "client-key.pem"
        self.client_cert.write_bytes(self.client.cert_pem())
        self.client_key.write_bytes(self.client.key_pem())
        self.rotate()

    def rotate(self) -> IssuedCertificate:
        leaf = issue_certificate(
            "localhost",
            issuer=self.ca,
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1"],
            extended_key_usages=[SERVER_AUTH],
        )
        self.key.write_bytes(leaf.key_pem())
        self.cert.write_bytes(leaf.cert_pem())
        return leaf


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def serve(ctx: ssl.SSLContext) -> tuple[asyncio.Server, int, list[str | None]]:
    """A TLS echo-less server that records each caller's identity."""
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(peer_identity_of_cert(writer.get_extra_info("peercert")))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], seen


async def handshake(port: int, pki: Pki, *, with_cert: bool) -> x509.Certificate:
    client = ssl.create_default_context(cafile=pki.ca_file)
    if with_cert:
        client.load_cert_chain(pki.client_cert, pki.client_key)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert await reader.read() == b"ok"
    writer.close()
    return x509.load_der_x509_certificate(der)


@pytest.fixture
async def optional(pki: Pki) -> AsyncIterator[tuple[int, list[str | None]]]:
    ctx, _ = reloading_ssl_context(pki.cert, pki.key, pki.ca_file, require_client_cert=False)
    server, port, seen = await serve(ctx)
    async with server:
        yield port, seen


async def test_rotated_files_are_served_at_the_next_handshake(
    pki: Pki, optional: tuple[int, list[str | None]]
) -> None:
    port, _ = optional
    before = await handshake(port, pki, with_cert=False)
    leaf = pki.rotate()
    after = await handshake(port, pki, with_cert=False)
    assert before.serial_number != after.serial_number
    assert after.serial_number == leaf.certificate.serial_number
    assert (await handshake(port, pki, with_cert=False)).serial_number == after.serial_number


async def test_a_half_written_rotation_keeps_the_old_pair(
    pki: Pki, optional: tuple[int, list[str | None]]
) -> None:
    port, _ = optional
    before = await handshake(port, pki, with_cert=False)
    other = issue_certificate("other", issuer=pki.ca, dns_names=["localhost"])
    pki.cert.write_bytes(other.cert_pem())  # the key is not updated yet
    assert (await handshake(port, pki, with_cert=False)).serial_number == before.serial_number


async def test_client_certificates_are_optional_but_identified(
    pki: Pki, optional: tuple[int, list[str | None]]
) -> None:
    port, seen = optional
    await handshake(port, pki, with_cert=False)
    await handshake(port, pki, with_cert=True)
    assert seen == [None, client_spiffe_id("c1")]


async def test_required_client_certificates(pki: Pki) -> None:
    ctx, _ = reloading_ssl_context(pki.cert, pki.key, pki.ca_file, require_client_cert=True)
    server, port, seen = await serve(ctx)
    async with server:
        await handshake(port, pki, with_cert=True)
        # TLS 1.3: the client learns of the refusal when it reads, after its handshake.
        with pytest.raises((ssl.SSLError, ConnectionResetError, AssertionError)):
            await handshake(port, pki, with_cert=False)
    assert seen == [client_spiffe_id("c1")]


def test_required_without_a_ca_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="client_ca"):
        reloading_ssl_context(pki.cert, pki.key, None, require_client_cert=True)


def test_identity_prefers_the_first_san_then_the_cn() -> None:
    assert peer_identity_of_cert(None) is None
    assert peer_identity_of_cert({"subject": ((("commonName", "svc"),),)}) == "svc"
    cert = {
        "subject": ((("commonName", "svc"),),),
        "subjectAltName": (("URI", "spiffe://x/y"), ("DNS", "a")),
    }
    assert peer_identity_of_cert(cert) == "spiffe://x/y"
