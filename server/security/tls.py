"""TLS for the façade: server credentials (mTLS by default), caller certificate identity."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import grpc

logger = logging.getLogger(__name__)

__all__ = [
    "CertificateFiles",
    "client_ssl_context",
    "peer_identity",
    "peer_identity_of_cert",
    "reloading_server_credentials",
    "reloading_ssl_context",
    "server_credentials",
]

# Keys of grpc's auth context for TLS peers (grpc/src/core/tsi/ssl_transport_security.h).
_SAN_KEY = "x509_subject_alternative_name"
_CN_KEY = "x509_common_name"


def server_credentials(
    cert: Path,
    key: Path,
    client_ca: Path | None,
    *,
    require_client_auth: bool = True,
) -> grpc.ServerCredentials:
    """TLS credentials for `server.add_secure_port`.

    With `require_client_auth` (the default, as the API contract says) the handshake itself
    refuses callers without a certificate issued by `client_ca`; they never reach an interceptor
    and only see UNAVAILABLE.
    """
    if require_client_auth and client_ca is None:
        raise ValueError("require_client_auth needs client_ca, the CA that issues client certs")
    root = Path(client_ca).read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=root,
        require_client_auth=require_client_auth,
    )


class CertificateFiles:
    """Server certificate, key and client CA read from files, reloaded when they change.

    Used through `grpc.dynamic_ssl_server_credentials`: grpc calls `fetch()` at every new TLS
    handshake; returning None keeps the current certificates, a new configuration replaces them
    for later handshakes. Established connections (and their open streams) are not touched.
    A half-written set (e.g. key updated, cert not yet) is not taken: the pair must load.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._paths = tuple(p for p in (cert, key, client_ca) if p is not None)
        self._cert, self._key, self._ca = Path(cert), Path(key), client_ca
        self._signature = self._stat()
        self.reloads = 0

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(
            (st.st_ino, st.st_size, st.st_mtime_ns) for st in (p.stat() for p in self._paths)
        )

    def configuration(self) -> Any:
        root = Path(self._ca).read_bytes() if self._ca is not None else None
        return grpc.ssl_server_certificate_configuration(
            [(self._key.read_bytes(), self._cert.read_bytes())], root_certificates=root
        )

    def fetch(self) -> Any:
        try:
            signature = self._stat()
            if signature == self._signature:
                return None
            config = self.configuration()
            _check_pair(self._cert, self._key)
        except (OSError, ValueError) as exc:
            logger.warning("TLS files changed but cannot be loaded yet (%s); keeping the old", exc)
            return None
        self._signature = signature
        self.reloads += 1
        logger.info("TLS certificates reloaded from %s", self._cert.parent)
        return config


def _check_pair(cert: Path, key: Path) -> None:
    """ValueError unless the key belongs to the certificate (a rotation caught half-way)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if public.public_bytes(enc, fmt) != private.public_key().public_bytes(enc, fmt):
        raise ValueError(f"{key} does not match {cert}")


def reloading_server_credentials(
    cert: Path, key: Path, client_ca: Path | None, *, require_client_auth: bool = True
) -> tuple[grpc.ServerCredentials, CertificateFiles]:
    """Like server_credentials, but certificates are re-read when the files change."""
    if require_client_auth and client_ca is None:
        raise ValueError("require_client_auth needs client_ca, the CA that issues client certs")
    files = CertificateFiles(cert, key, client_ca)
    creds = grpc.dynamic_ssl_server_credentials(
        files.configuration(), files.fetch, require_client_authentication=require_client_auth
    )
    return creds, files


def peer_identity(context: Any) -> str | None:
    """The caller's certificate identity: its first SAN (e.g. a SPIFFE URI), else its CN.

    None for plaintext or a TLS peer without a certificate. `context` is a grpc (aio)
    ServicerContext; auth context values are bytes.
    """
    auth = context.auth_context() or {}
    for key in (_SAN_KEY, _CN_KEY):
        values = auth.get(key) or []
        if values:
            return values[0].decode("utf-8", errors="replace")
    return None


def client_ssl_context(ca_cert: bytes, cert_file: str, key_file: str) -> ssl.SSLContext:
    """The engine link's mTLS client side, HTTP/2 by ALPN (what gRPC servers expect)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_cert.decode())
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _server_ssl_context(
    cert: Path, key: Path, client_ca: Path | None, *, require_client_cert: bool
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        # Verified when presented; refused when absent only if required.
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def reloading_ssl_context(
    cert: Path, key: Path, client_ca: Path | None, *, require_client_cert: bool
) -> tuple[ssl.SSLContext, CertificateFiles]:
    """An `ssl.SSLContext` for the HTTP front door that picks up rotated files without restart.

    Same rule as the gRPC credentials (CertificateFiles): at each handshake, if the files
    changed and the new pair loads, later handshakes use it; established connections keep
    theirs. The swap happens in the SNI callback, which OpenSSL runs on every ClientHello (with
    or without a server name); assigning `SSLObject.context` there replaces the certificate,
    key and trust store for that handshake (OpenSSL `SSL_set_SSL_CTX`).
    """
    if require_client_cert and client_ca is None:
        raise ValueError("require_client_cert needs client_ca, the CA that issues client certs")
    files = CertificateFiles(cert, key, client_ca)

    def build() -> ssl.SSLContext:
        return _server_ssl_context(cert, key, client_ca, require_client_cert=require_client_cert)

    current = [build()]

    def on_hello(sslobj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: Any) -> None:
        if files.fetch() is not None:  # changed, and the new pair loads
            try:
                fresh = build()
            except (OSError, ssl.SSLError) as exc:
                logger.warning("TLS files changed but cannot be loaded yet (%s)", exc)
            else:
                fresh.sni_callback = on_hello
                current[0] = fresh
        if sslobj.context is not current[0]:
            sslobj.context = current[0]

    first = current[0]  # the server wraps every connection with this one; the callback swaps
    first.sni_callback = on_hello
    return first, files


def peer_identity_of_cert(cert: dict[str, Any] | None) -> str | None:
    """The identity `peer_identity` gives for gRPC, from Python's `getpeercert()` dict: the
    first subjectAltName value in certificate order (as grpc's auth context lists them), else
    the CN. None without a (verified) client certificate."""
    if not cert:
        return None
    for _kind, value in cert.get("subjectAltName", ()):
        return str(value)
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
