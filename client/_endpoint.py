"""Endpoint parsing for one decision: is a plaintext (insecure) connection acceptable?

Plaintext is refused unless the endpoint is loopback, so a token can never cross a network in
the clear. The endpoint is a gRPC target: `host:port`, `[v6]:port`, or with a `dns:`, `ipv4:` or
`ipv6:` scheme (https://github.com/grpc/grpc/blob/master/doc/naming.md).
"""

from __future__ import annotations

import ipaddress

__all__ = ["endpoint_host", "is_loopback"]

_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def endpoint_host(endpoint: str) -> str:
    """The host part of a gRPC target, without scheme, brackets or port."""
    target = endpoint.strip()
    for scheme in _SCHEMES:
        if target.lower().startswith(scheme):
            target = target[len(scheme) :]
            # "dns://authority/host:port": the authority (DNS server) is not the target host.
            if target.startswith("//"):
                target = target[2:].split("/", 1)[-1]
            break
    if target.startswith("["):
        return target[1 : target.find("]")] if "]" in target else target[1:]
    if target.count(":") == 1:
        return target.rsplit(":", 1)[0]
    return target  # no port, or a bare IPv6 address


def is_loopback(endpoint: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (nothing else, not even this host's own names)."""
    host = endpoint_host(endpoint).rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
