"""Triton targets: parsing, resolution and the channel target over the healthy endpoints."""

from __future__ import annotations

import pytest

from autoglm.server.engine.replicas import (
    HostPort,
    TargetError,
    channel_target,
    parse_target,
    resolve,
    unix_socket_path,
)


@pytest.mark.parametrize(
    ("target", "hosts", "replicated"),
    [
        ("127.0.0.1:8001", [("127.0.0.1", 8001)], False),
        ("triton:8001", [("triton", 8001)], False),
        ("10.0.0.1:8001,10.0.0.2:8001", [("10.0.0.1", 8001), ("10.0.0.2", 8001)], True),
        ("ipv4:10.0.0.1:8001,10.0.0.2:9001", [("10.0.0.1", 8001), ("10.0.0.2", 9001)], True),
        ("ipv4:10.0.0.1:8001", [("10.0.0.1", 8001)], True),
        ("ipv6:[::1]:8001,[fe80::1]:8001", [("::1", 8001), ("fe80::1", 8001)], True),
        ("dns:///triton-h100.autoglm.svc:8001", [("triton-h100.autoglm.svc", 8001)], True),
        ("a:1, b:2", [("a", 1), ("b", 2)], True),
    ],
)
def test_parse(target: str, hosts: list[tuple[str, int]], replicated: bool) -> None:
    spec = parse_target(target)
    assert [(h.host, h.port) for h in spec.hosts] == hosts
    assert spec.replicated is replicated


@pytest.mark.parametrize(
    "target",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "a:1,",
        "a:1,,b:2",
        "a:1,a:1",
        "dns://8.8.8.8/triton:8001",
        "dns:///triton",
        ":8001",
    ],
)
def test_parse_refuses_naming_the_setting(target: str) -> None:
    with pytest.raises(TargetError, match=r"^triton_target: "):
        parse_target(target)


def test_unix_socket_is_passed_through() -> None:
    spec = parse_target("unix:/run/triton.sock")
    assert spec.hosts == () and not spec.replicated


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("unix:/run/autoglm/grpc:1", "/run/autoglm/grpc:1"),  # Triton's "<address>:<port>"
        ("unix:///run/triton.sock", "/run/triton.sock"),
        (" unix:/run/triton.sock ", "/run/triton.sock"),
        ("127.0.0.1:8001", None),
        ("dns:///triton:8001", None),
    ],
)
def test_unix_socket_path(target: str, path: str | None) -> None:
    assert unix_socket_path(target) == path


@pytest.mark.parametrize("target", ["unix:triton.sock", "unix:", "unix://host/x", "unix:./s"])
def test_unix_socket_path_must_be_absolute(target: str) -> None:
    with pytest.raises(TargetError, match=r"^triton_target: .*absolute path"):
        parse_target(target)


def test_tls_name_is_the_first_host_name() -> None:
    assert parse_target("dns:///triton.svc:8001").tls_name == "triton.svc"
    assert parse_target("10.0.0.1:1,10.0.0.2:1").tls_name is None
    assert parse_target("10.0.0.1:1,triton-b:1").tls_name == "triton-b"


def test_resolve_keeps_ips_and_resolves_names() -> None:
    assert resolve(parse_target("10.0.0.2:1,10.0.0.1:1")) == ["10.0.0.1:1", "10.0.0.2:1"]
    assert resolve(parse_target("dns:///localhost:8001")) in (
        ["127.0.0.1:8001"],
        ["127.0.0.1:8001", "[::1]:8001"],
        ["[::1]:8001"],
    )


def test_unresolvable_name_contributes_nothing() -> None:
    assert resolve(parse_target("dns:///no-such-host.invalid:8001")) == []


def test_channel_target() -> None:
    assert channel_target(["10.0.0.1:1", "10.0.0.2:1"]) == "ipv4:10.0.0.1:1,10.0.0.2:1"
    assert channel_target(["[::1]:1"]) == "ipv6:[::1]:1"
    with pytest.raises(TargetError, match="mix"):
        channel_target(["10.0.0.1:1", "[::1]:1"])
    with pytest.raises(TargetError):
        channel_target([])


def test_host_port_str_brackets_ipv6() -> None:
    assert str(HostPort("::1", 8001)) == "[::1]:8001"
    assert str(HostPort("10.0.0.1", 8001)) == "10.0.0.1:8001"
