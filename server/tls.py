"""TLS for the façade: server credentials (mTLS by default), caller certificate identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

__all__ = ["peer_identity", "server_credentials"]

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
