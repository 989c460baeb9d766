"""gRPC channels (sync and grpc.aio) from a `ClientConfig`.

Secure mode composes the credentials as grpc's `examples/python/auth/
async_customized_auth_client.py` does: `ssl_channel_credentials(root, key, chain)` for mTLS, and
call credentials that add `authorization: Bearer <token>` to every call, joined by
`composite_channel_credentials`. gRPC refuses to send call credentials over plaintext, so
insecure (loopback-only, enforced by `ClientConfig`) mode sends the same header as per-call
metadata instead (`call_metadata`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from autoglm.client._config import ClientConfig
from autoglm.client._exceptions import ConfigError
from autoglm.client._version import __version__

__all__ = [
    "TlsMaterial",
    "call_metadata",
    "channel_credentials",
    "channel_options",
    "create_aio_channel",
    "create_channel",
    "read_tls_material",
]

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes as `grpc.ssl_channel_credentials` takes them (None = not used)."""

    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None


def _read(name: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {name} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"{name} {path} is empty")
    return data


def read_tls_material(config: ClientConfig) -> TlsMaterial:
    """Read the TLS files now, so that a bad path fails here and not inside a handshake."""
    return TlsMaterial(
        root_certificates=_read("ca_cert", config.ca_cert),
        private_key=_read("client_key", config.client_key),
        certificate_chain=_read("client_cert", config.client_cert),
    )


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    """mTLS channel credentials, composed with the bearer token when there is one."""
    tls = read_tls_material(config)
    ssl = grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )
    if not config.token:
        return ssl
    # access_token_call_credentials sends exactly `authorization: Bearer <token>`.
    return grpc.composite_channel_credentials(ssl, grpc.access_token_call_credentials(config.token))


def channel_options(config: ClientConfig) -> list[tuple[str, str | int]]:
    options: list[tuple[str, str | int]] = [
        ("grpc.primary_user_agent", f"autoglm-client/{__version__}")
    ]
    if config.retry.max_attempts > 1:
        # A channel that failed to connect fails every call at once until its next connection
        # attempt, which gRPC makes after 1 s, then 1.6 s, ... up to 120 s
        # (grpc/doc/connection-backoff.md). Retries on the client's shorter schedule would all
        # land in that window, so the reconnection backoff follows the retry policy's bounds.
        retry = config.retry
        options += [
            ("grpc.initial_reconnect_backoff_ms", max(1, round(retry.initial_backoff * 1e3))),
            ("grpc.max_reconnect_backoff_ms", max(1, round(retry.max_backoff * 1e3))),
        ]
    if config.server_name and not config.insecure:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return options


def call_metadata(config: ClientConfig) -> Metadata:
    """Per-call metadata: the bearer token in insecure mode, nothing otherwise."""
    if config.insecure and config.token:
        return (("authorization", f"Bearer {config.token}"),)
    return ()


def create_channel(config: ClientConfig) -> grpc.Channel:
    if config.insecure:
        return grpc.insecure_channel(config.endpoint, options=channel_options(config))
    return grpc.secure_channel(
        config.endpoint, channel_credentials(config), options=channel_options(config)
    )


def create_aio_channel(config: ClientConfig) -> grpc.aio.Channel:
    if config.insecure:
        return grpc.aio.insecure_channel(config.endpoint, options=channel_options(config))
    return grpc.aio.secure_channel(
        config.endpoint, channel_credentials(config), options=channel_options(config)
    )
