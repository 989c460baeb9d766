"""TLS for the façade: server credentials (mTLS by default), caller certificate identity."""

from __future__ import annotations

import contextlib
import inspect
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from autoglm.server.grpc_handlers import rewrap

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TLS_MIN_VERSION",
    "GRPC_CIPHERS_ENV",
    "GRPC_TLS13_ONLY_CIPHERS",
    "TLS_MIN_VERSIONS",
    "CertificateFiles",
    "TlsVersionInterceptor",
    "accepts_tls12_handshake",
    "client_ssl_context",
    "grpc_handshake_environment",
    "peer_identity",
    "peer_identity_of_cert",
    "probe_host",
    "reloading_server_credentials",
    "reloading_ssl_context",
    "server_credentials",
]

# Keys of grpc's auth context for TLS peers (grpc/src/core/tsi/ssl_transport_security.h).
_SAN_KEY = "x509_subject_alternative_name"
_CN_KEY = "x509_common_name"
# The negotiated protocol, b"TLSv1.2" / b"TLSv1.3" (seen at run time in grpcio 1.85.1's auth
# context; the tsi peer property TSI_SSL_TLS_VERSION_PEER_PROPERTY).
_TLS_VERSION_KEY = "ssl_tls_version"

# The lowest TLS version every TLS listener accepts (`--tls-min-version`): 1.3 by default, 1.2
# only when asked for.
TLS_MIN_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_TLS_MIN_VERSION = "1.3"
_AUTH_CONTEXT_VERSIONS = {b"TLSv1.2": "1.2", b"TLSv1.3": "1.3"}

# grpcio's Python API (1.85.1) has no minimum-TLS-version parameter: `ssl_server_credentials`
# and `dynamic_ssl_server_credentials` build grpc core's ssl credentials with the core default,
# TLS 1.2 to 1.3. What grpc core does read is GRPC_SSL_CIPHER_SUITES, the TLS <= 1.2 cipher
# list (BoringSSL's TLS 1.3 suites are fixed and not governed by it). Restricting it to one
# pre-shared-key suite leaves TLS 1.2 nothing to negotiate: grpc installs no PSK callback, so
# BoringSSL never selects a PSK suite, and a 1.2 ClientHello gets NO_SHARED_CIPHER, while a 1.3
# handshake is untouched. grpc reads the variable once, when the grpc module is first imported,
# and for the whole process (its client channels too: the Triton link then needs TLS 1.3 as
# well, which Triton's gRPC server speaks). `autoglm serve` therefore re-executes itself with it
# set (cli_serve.py); `TlsVersionInterceptor` refuses calls over an older protocol in any case.
GRPC_CIPHERS_ENV = "GRPC_SSL_CIPHER_SUITES"
GRPC_TLS13_ONLY_CIPHERS = "PSK-AES128-CBC-SHA"


def grpc_handshake_environment(
    min_version: str, environ: Mapping[str, str]
) -> dict[str, str] | None:
    """The environment a process must start with so that its grpc refuses TLS 1.2 handshakes;
    None when nothing needs to change (1.2 allowed, or already set: an operator's own
    GRPC_SSL_CIPHER_SUITES is kept, and the start-up probe reports what it does)."""
    if min_version != "1.3" or GRPC_CIPHERS_ENV in environ:
        return None
    return {**environ, GRPC_CIPHERS_ENV: GRPC_TLS13_ONLY_CIPHERS}


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
    cert: Path, key: Path, client_ca: Path | None, *, require_client_cert: bool, min_version: str
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_MIN_VERSIONS[min_version]
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        # Verified when presented; refused when absent only if required.
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def reloading_ssl_context(
    cert: Path,
    key: Path,
    client_ca: Path | None,
    *,
    require_client_cert: bool,
    min_version: str = DEFAULT_TLS_MIN_VERSION,
) -> tuple[ssl.SSLContext, CertificateFiles]:
    """An `ssl.SSLContext` for the HTTP front door that picks up rotated files without restart.

    Same rule as the gRPC credentials (CertificateFiles): at each handshake, if the files
    changed and the new pair loads, later handshakes use it; established connections keep
    theirs. The swap happens in the SNI callback, which OpenSSL runs on every ClientHello (with
    or without a server name); assigning `SSLObject.context` there replaces the certificate,
    key and trust store for that handshake (OpenSSL `SSL_set_SSL_CTX`). `min_version` ("1.3"
    or "1.2") is the lowest protocol accepted; an older ClientHello fails the handshake.
    """
    if require_client_cert and client_ca is None:
        raise ValueError("require_client_cert needs client_ca, the CA that issues client certs")
    files = CertificateFiles(cert, key, client_ca)

    def build() -> ssl.SSLContext:
        return _server_ssl_context(
            cert, key, client_ca, require_client_cert=require_client_cert, min_version=min_version
        )

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


class TlsVersionInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call whose connection negotiated a TLS version below `min_version`, with
    UNAUTHENTICATED, before any other check of the call runs (put it before the auth
    interceptor): the per-call guarantee of `--tls-min-version`, whatever the handshake allowed.

    The handshake itself refuses TLS 1.2 only when grpc was loaded with GRPC_TLS13_ONLY_CIPHERS
    (see above); without it an old client completes the handshake and sends its call (token
    included, under TLS 1.2) before being refused here.
    """

    def __init__(self, min_version: str, on_refusal: Callable[[str], None] | None = None) -> None:
        self._min = TLS_MIN_VERSIONS[min_version]
        self._min_name = min_version
        self._on_refusal = on_refusal or (lambda _version: None)

    def refusal(self, auth_context: Mapping[str, Any]) -> str | None:
        """The refusal message for a call with this auth context, None if its TLS is recent
        enough. No version (plaintext, e.g. the health-only port) is not refused here."""
        values = auth_context.get(_TLS_VERSION_KEY) or []
        if not values:
            return None
        name = _AUTH_CONTEXT_VERSIONS.get(values[0])
        if name is not None and TLS_MIN_VERSIONS[name] >= self._min:
            return None
        shown = values[0].decode("ascii", errors="replace")
        self._on_refusal(shown)
        return f"tls: {shown} is refused; this server requires TLS {self._min_name} or later"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        # The auth context is only reachable from the servicer context, i.e. inside the call.
        return _guarded(handler, self.refusal)


def _guarded(
    handler: grpc.RpcMethodHandler, refusal: Callable[[Mapping[str, Any]], str | None]
) -> grpc.RpcMethodHandler:
    return rewrap(handler, lambda behavior: _guard_behavior(behavior, refusal))


def _guard_behavior(
    behavior: Callable[..., Any], refusal: Callable[[Mapping[str, Any]], str | None]
) -> Callable[..., Any]:
    # grpc.aio picks how to run a behaviour (await, async-iterate, executor) by inspecting it, so
    # each wrapper is the same kind of callable as the one it wraps (as in auth.py).
    code = grpc.StatusCode.UNAUTHENTICATED
    if inspect.isasyncgenfunction(behavior):

        async def async_gen(request: Any, context: Any) -> Any:
            if (message := refusal(context.auth_context() or {})) is not None:
                await context.abort(code, message)
            async for item in behavior(request, context):
                yield item

        return async_gen
    if inspect.iscoroutinefunction(behavior):

        async def coroutine(request: Any, context: Any) -> Any:
            if (message := refusal(context.auth_context() or {})) is not None:
                await context.abort(code, message)
            return await behavior(request, context)

        return coroutine
    if inspect.isgeneratorfunction(behavior):

        def sync_gen(request: Any, context: Any) -> Any:
            if (message := refusal(context.auth_context() or {})) is not None:
                context.set_code(code)
                context.set_details(message)
                return
            yield from behavior(request, context)

        return sync_gen

    def sync(request: Any, context: Any) -> Any:
        if (message := refusal(context.auth_context() or {})) is not None:
            context.set_code(code)
            context.set_details(message)
            return None
        return behavior(request, context)

    return sync


def accepts_tls12_handshake(host: str, port: int, timeout_s: float = 5.0) -> bool:
    """Whether the TLS server on host:port answers a TLS-1.2-only ClientHello with a ServerHello.

    A probe that needs no client certificate: it sends the ClientHello and reads the first
    record header back; a handshake record (type 22) means the server chose TLS 1.2 (a TLS 1.3
    server answers a 1.2-only hello with 1.2 or with an alert), an alert (21) or a closed
    connection means it refused. Blocking; run it in a thread from async code.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = ctx.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        hello.do_handshake()
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(outgoing.read())
        try:
            header = sock.recv(5)
        except (ConnectionResetError, TimeoutError):
            return False
    return header[:1] == b"\x16"


def probe_host(host: str) -> str:
    """Where to reach a listener bound to `host` from this machine (wildcards → loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host.strip("[]")
