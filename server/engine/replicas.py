"""Which Triton endpoints the façade talks to: parse the target, resolve it, name the channel.

A target is one of
  - `host:port`                      one Triton (the default; nothing is resolved by us);
  - `host1:port1,host2:port2,…`      several replicas, listed;
  - `ipv4:a:p,b:p` / `ipv6:[a]:p,…`  gRPC's own address-list syntax;
  - `dns:///name:port`               every address the name resolves to (a Kubernetes headless
                                     Service: one A record per ready Triton pod);
  - `unix:/abs/path`, `unix:///abs/path`  one Triton on this host, by its unix socket (gRPC's
                                     syntax; relative paths are refused: they would depend on
                                     the working directory).

With several endpoints the data path is one gRPC channel over the *healthy* ones with gRPC's own
`round_robin` policy (a dead replica's subchannel leaves the rotation as soon as its connection
breaks). Health-based ejection of a replica that is alive but wedged is the façade's job
(health.py): Triton 2.51 answers `grpc.health.v1.Health/Check` but not `Watch` (UNIMPLEMENTED,
seen here), and gRPC's client-side health checking (`healthCheckConfig`) needs `Watch` — with
UNIMPLEMENTED it treats every backend as healthy (gRFC A17). So health.py probes each endpoint
with a one-token generation and the engine client rebuilds the round_robin channel over the
endpoints that passed (`EngineClient.use_endpoints`).

Pure parsing here; resolution (`resolve`) does blocking DNS and runs in a thread.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass


class TargetError(ValueError):
    """A malformed Triton target; the message names the setting."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str  # a name or an IP literal (IPv6 without brackets)
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A parsed target. `replicated` = the façade manages several endpoints (health per replica)."""

    raw: str
    hosts: tuple[HostPort, ...]
    replicated: bool

    @property
    def tls_name(self) -> str | None:
        """The name the TLS certificate is checked against when we connect by IP address.

        gRPC checks the certificate against the channel's authority; a channel over an address
        list (`ipv4:…`) has none that matches a certificate, so the (first) host name is used.
        None when every host is an IP literal (then the certificate must carry the IPs, or the
        operator sets the link's server name).
        """
        names = [h.host for h in self.hosts if not h.is_ip]
        return names[0] if names else None


def _host_port(text: str, setting: str) -> HostPort:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"{setting}: {text!r} is not host:port")
    return HostPort(host, int(port))


def parse_target(target: str, setting: str = "triton_target") -> TargetSpec:
    """Parse a Triton target (see the module docstring); TargetError names `setting`."""
    raw = target.strip()
    if not raw:
        raise TargetError(f"{setting}: empty")
    if raw.startswith("unix:"):
        unix_socket_path(raw, setting)
        return TargetSpec(raw, (), replicated=False)
    if raw.startswith("dns:"):
        rest = raw.removeprefix("dns:").removeprefix("///")
        if "/" in rest or "," in rest:
            raise TargetError(f"{setting}: {raw!r}: use dns:///name:port (no DNS authority)")
        return TargetSpec(raw, (_host_port(rest, setting),), replicated=True)
    body = raw
    for scheme in ("ipv4:", "ipv6:"):
        if raw.startswith(scheme):
            body = raw.removeprefix(scheme)
    parts = body.split(",")
    if any(not p.strip() for p in parts):
        raise TargetError(f"{setting}: {raw!r} has an empty entry")
    hosts = tuple(_host_port(p, setting) for p in parts)
    if len(set(hosts)) != len(hosts):
        raise TargetError(f"{setting}: {raw!r} lists an endpoint twice")
    if body is raw and len(hosts) == 1:
        return TargetSpec(raw, hosts, replicated=False)  # one host:port, used as given
    return TargetSpec(raw, hosts, replicated=True)


def unix_socket_path(target: str, setting: str = "triton_target") -> str | None:
    """The socket path of a `unix:` target (None for any other); TargetError if not absolute."""
    target = target.strip()  # as parse_target reads it
    if not target.startswith("unix:"):
        return None
    path = target.removeprefix("unix:")
    if path.startswith("///"):
        path = path[2:]
    if not path.startswith("/") or path.startswith("//"):
        raise TargetError(f"{setting}: {target!r}: give an absolute path, unix:/path/to/socket")
    return path


def resolve(spec: TargetSpec) -> list[str]:
    """Endpoint addresses ("ip:port", sorted) of a replicated target, resolving names (blocking).

    A name that does not resolve contributes nothing (a headless Service with no ready pod);
    the caller decides what an empty list means.
    """
    out: set[str] = set()
    for hp in spec.hosts:
        if hp.is_ip:
            out.add(str(hp))
            continue
        try:
            infos = socket.getaddrinfo(hp.host, hp.port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                out.add(str(HostPort(str(sockaddr[0]), hp.port)))
    return sorted(out)


def channel_target(addresses: Sequence[str]) -> str:
    """The gRPC target of one channel over `addresses` ("ip:port" each, as `resolve` returns)."""
    if not addresses:
        raise TargetError("no endpoint addresses")
    v6 = [a for a in addresses if a.startswith("[")]
    if v6 and len(v6) != len(addresses):
        # gRPC's address-list URIs (ipv4:/ipv6:) hold one address family each.
        raise TargetError(f"cannot mix IPv4 and IPv6 endpoints in one channel: {list(addresses)}")
    return ("ipv6:" if v6 else "ipv4:") + ",".join(addresses)
