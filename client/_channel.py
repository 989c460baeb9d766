"""gRPC channels (sync and grpc.aio) from a `ClientConfig`.

Secure mode is mTLS: `ssl_channel_credentials(root, key, chain)`, as grpc's `examples/python/
auth/async_customized_auth_client.py` does. The bearer token goes as per-call metadata
(`call_metadata`: `authorization: Bearer <token>`), not as composed call credentials as that
example (and style.md #5) has it: gRPC Python runs every call-credentials plugin,
`access_token_call_credentials` included, on a new thread for every call (counted: one
`threading.Thread` per RPC). That cost callers ~0.4–0.8 ms of time to first token at low load
in the benchmark (`autoglm bench`, 2-core development VM). The server receives the same header
either way. What call credentials guarantee — the token never crosses plaintext — holds by
construction here: the metadata and the channel come from the same `ClientConfig`, and its
channel is TLS unless the operator chose the insecure mode, which `ClientConfig` allows on
loopback only.
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
    """mTLS channel credentials (the token goes per call: `call_metadata`)."""
    tls = read_tls_material(config)
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


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
    """Per-call metadata: `authorization: Bearer <token>` when there is a token (what
    `access_token_call_credentials` would send), nothing otherwise."""
    if config.token:
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
