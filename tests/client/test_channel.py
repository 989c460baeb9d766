"""Channel construction: loopback-only plaintext, TLS file errors, credentials and metadata."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from autoglm.client import ClientConfig, ConfigError
from autoglm.client._channel import (
    call_metadata,
    channel_options,
    create_channel,
    read_tls_material,
)
from autoglm.client._endpoint import endpoint_host, is_loopback
from tests.client.conftest import TOKEN


def _config(endpoint: str = "autoglm.example.com:443", **kwargs: object) -> ClientConfig:
    values: dict[str, object] = {
        "ca_cert": None,
        "client_cert": None,
        "client_key": None,
        "token": TOKEN,
    }
    values.update(kwargs)
    return ClientConfig(endpoint, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        ("localhost:50051", "localhost"),
        ("[::1]:50051", "::1"),
        ("::1", "::1"),
        ("dns:///localhost:50051", "localhost"),
        ("dns://8.8.8.8/example.com:443", "example.com"),
        ("ipv4:127.0.0.1:80", "127.0.0.1"),
        ("example.com", "example.com"),
    ],
)
def test_endpoint_host(endpoint: str, host: str) -> None:
    assert endpoint_host(endpoint) == host


@pytest.mark.parametrize(
    "endpoint",
    ["localhost:50051", "LOCALHOST:1", "127.0.0.1:50051", "127.8.9.10:1", "[::1]:50051",
     "dns:///localhost:50051", "ipv6:[::1]:50051"],
)  # fmt: skip
def test_loopback(endpoint: str) -> None:
    assert is_loopback(endpoint)
    assert _config(endpoint, insecure=True).insecure


@pytest.mark.parametrize(
    "endpoint",
    ["10.0.0.1:50051", "autoglm.example.com:443", "[2001:db8::1]:443", "0.0.0.0:50051",
     "localhost.example.com:1", "128.0.0.1:1", "unix:/tmp/autoglm.sock"],
)  # fmt: skip
def test_insecure_refused_for_non_loopback(endpoint: str) -> None:
    assert not is_loopback(endpoint)
    with pytest.raises(ConfigError, match="only allowed to loopback"):
        _config(endpoint, insecure=True)


def test_insecure_refused_through_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_ENDPOINT", "192.168.1.5:50051")
    with pytest.raises(ConfigError, match="loopback"):
        ClientConfig.load(insecure=True)


def test_insecure_sends_bearer_token_per_call() -> None:
    config = _config("127.0.0.1:50051", insecure=True)
    assert call_metadata(config) == (("authorization", f"Bearer {TOKEN}"),)
    create_channel(config).close()


def test_tls_sends_bearer_token_per_call() -> None:
    # Per-call metadata on the mTLS channel, not composed call credentials: gRPC Python runs a
    # credentials plugin on a new thread for every call (client/_channel.py).
    assert call_metadata(_config()) == (("authorization", f"Bearer {TOKEN}"),)


def test_no_token_no_metadata() -> None:
    assert call_metadata(_config(token=None)) == ()


def test_server_name_override_option() -> None:
    options = dict(channel_options(_config(server_name="autoglm.internal")))
    assert options["grpc.ssl_target_name_override"] == "autoglm.internal"
    assert "grpc.ssl_target_name_override" not in dict(channel_options(_config()))


def test_unreadable_tls_file_is_a_config_error(tmp_path: Path) -> None:
    config = _config(ca_cert=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"cannot read ca_cert .*nope\.pem"):
        create_channel(config)


def test_empty_tls_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("")
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = _config(client_cert=tmp_path / "cert.pem", client_key=tmp_path / "key.pem")
    with pytest.raises(ConfigError, match=r"client_key .* is empty"):
        read_tls_material(config)


def test_tls_material_read(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_bytes(f"PEM {name}".encode())
    config = _config(
        ca_cert=tmp_path / "ca.pem",
        client_cert=tmp_path / "cert.pem",
        client_key=tmp_path / "key.pem",
    )
    tls = read_tls_material(config)
    assert tls.root_certificates == b"PEM ca.pem"
    assert tls.certificate_chain == b"PEM cert.pem"
    assert tls.private_key == b"PEM key.pem"


def test_secure_channel_with_system_roots() -> None:
    channel = create_channel(_config())
    assert isinstance(channel, grpc.Channel)
    channel.close()
