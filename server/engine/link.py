"""The secured façade → Triton link: Triton's restricted-protocol secret, plus either its own
mTLS (Triton on another host) or a unix socket in a private directory (Triton on this host).

Triton listens with `--grpc-restricted-protocol=<protocols>:<key>=<secret>` (every call but
health must carry the header `triton-grpc-protocol-<key>: <secret>`) and HTTP off, and either
  - over TCP with `--grpc-use-ssl-mutual` (only certificates from the link's CA connect). The
    link's CA is separate from the one that signs callers' certificates: a caller's client
    certificate does not open Triton; or
  - on a unix socket (`unix_link`): only processes that may enter the socket's directory (mode
    0700, the service's user) can connect, so the secret is a second lock rather than the only
    one, and nothing crosses a network to encrypt. Without asyncio's TLS the engine reader spends
    ~25–35 µs less CPU per streamed token, the whole façade ~10–15 µs (~5 %, measured with
    `autoglm bench` on the 2-core development VM), and the secret on Triton's command line
    (visible in `ps`) no longer opens Triton to other local users.
So nothing but the façade can run inference even on a shared host. Flags as in Triton 2.51
`tritonserver --help` (facts.md).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from autoglm.server.files import write_atomic
from autoglm.server.security.tls import client_ssl_context

# Every protocol group but "health" (ServerLive/ServerReady/ModelReady stay open for probes).
RESTRICTED_PROTOCOLS = (
    "inference",
    "model-config",
    "model-repository",
    "metadata",
    "shared-memory",
    "statistics",
    "trace",
    "logging",
)
HEADER_KEY = "autoglm-facade"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The link's mTLS: Triton's server side and the façade's client side, one CA."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True, slots=True)
class EngineLink:
    secret: str = field(repr=False)
    tls: TlsFiles | None = None  # None: a unix-socket link (no network, nothing to encrypt)
    header_key: str = HEADER_KEY

    def triton_args(self) -> list[str]:
        tls = self.tls
        return [
            "--allow-http=false",
            *(
                (
                    "--grpc-use-ssl=true",
                    "--grpc-use-ssl-mutual=true",
                    f"--grpc-server-cert={tls.server_cert}",
                    f"--grpc-server-key={tls.server_key}",
                    f"--grpc-root-cert={tls.ca_cert}",
                )
                if tls is not None
                else ()
            ),
            f"--grpc-restricted-protocol={','.join(RESTRICTED_PROTOCOLS)}:"
            f"{self.header_key}={self.secret}",
        ]

    def write_secret(self, path: Path) -> Path:
        """The secret in a file for `autoglm serve --triton-secret-file`: mode 0600 from the
        start (never readable by others, not even briefly), written atomically."""
        write_atomic(path, self.secret.encode(), mode=0o600)
        return path

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """mTLS credentials for a grpc channel; None (insecure channel) on a unix-socket link."""
        if self.tls is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca_cert.read_bytes(),
            private_key=self.tls.client_key.read_bytes(),
            certificate_chain=self.tls.client_cert.read_bytes(),
        )

    def channel(self, target: str) -> grpc.Channel:
        """A blocking grpc channel to Triton over this link."""
        creds = self.channel_credentials()
        return grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)

    def aio_channel(self, target: str) -> grpc.aio.Channel:
        """A grpc.aio channel to Triton over this link."""
        creds = self.channel_credentials()
        return (
            grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The same client side for the engine reader (reader.py)."""
        if self.tls is None:
            return None
        return client_ssl_context(
            self.tls.ca_cert.read_bytes(), str(self.tls.client_cert), str(self.tls.client_key)
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((f"triton-grpc-protocol-{self.header_key}", self.secret),)
