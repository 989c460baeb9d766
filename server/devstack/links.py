"""Engine links for a Triton this process starts itself: fresh secrets, the dev PKI."""

from __future__ import annotations

import secrets
from pathlib import Path

from autoglm.server.devstack.pki import ensure_dev_pki
from autoglm.server.engine.link import EngineLink, TlsFiles


def dev_engine_link(directory: Path) -> EngineLink:
    """An mTLS link with its own dev CA and a fresh secret (kept in memory only)."""
    pki = ensure_dev_pki(directory, client_name="facade")
    return EngineLink(
        secret=secrets.token_urlsafe(32),
        tls=TlsFiles(
            ca_cert=pki.ca_cert,
            server_cert=pki.server_cert,
            server_key=pki.server_key,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
        ),
    )


def unix_link() -> EngineLink:
    """A unix-socket link with a fresh secret (kept in memory only); Triton on this host, its
    socket in a private directory (`TritonOptions(grpc_unix=True)`)."""
    return EngineLink(secret=secrets.token_urlsafe(32))
