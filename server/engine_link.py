"""The secured façade → Triton link: Triton's own mTLS plus its restricted-protocol secret.

Triton listens with `--grpc-use-ssl-mutual` (only certificates from the link's CA connect) and
`--grpc-restricted-protocol=<protocols>:<key>=<secret>` (every call but health must carry the
header `triton-grpc-protocol-<key>: <secret>`), and HTTP is off, so nothing but the façade can
run inference even on a shared host. Flags as in Triton 2.51 `tritonserver --help` (facts.md).
The link's CA is separate from the one that signs callers' certificates: a caller's client
certificate does not open Triton.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from autoglm.server.engine_h2 import client_ssl_context
from autoglm.server.pki import ensure_dev_pki

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
class EngineLink:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    secret: str = field(repr=False)
    header_key: str = HEADER_KEY

    def triton_args(self) -> list[str]:
        return [
            "--allow-http=false",
            "--grpc-use-ssl=true",
            "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={self.server_cert}",
            f"--grpc-server-key={self.server_key}",
            f"--grpc-root-cert={self.ca_cert}",
            f"--grpc-restricted-protocol={','.join(RESTRICTED_PROTOCOLS)}:"
            f"{self.header_key}={self.secret}",
        ]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert.read_bytes(),
            private_key=self.client_key.read_bytes(),
            certificate_chain=self.client_cert.read_bytes(),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same client side for the lean inference reader (engine_h2.py)."""
        return client_ssl_context(
            self.ca_cert.read_bytes(), str(self.client_cert), str(self.client_key)
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((f"triton-grpc-protocol-{self.header_key}", self.secret),)


def dev_engine_link(directory: Path) -> EngineLink:
    """A link with its own dev CA and a fresh secret (kept in memory only)."""
    pki = ensure_dev_pki(directory, client_name="facade")
    return EngineLink(
        ca_cert=pki.ca_cert,
        server_cert=pki.server_cert,
        server_key=pki.server_key,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        secret=secrets.token_urlsafe(32),
    )
