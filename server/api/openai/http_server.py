"""The OpenAI front door's HTTP server: uvicorn (httptools parser) in the façade's event loop.

One process, one loop: the HTTP routes call the same `Generations` object as the gRPC
servicer, so limits, metrics and the audit chain are shared without any hand-over.

TLS: the server certificate, and client certificates verified against the configured CA when
a client presents one (required with `openai_require_client_cert`). OpenAI clients authenticate
with an API key and cannot present a certificate without code changes, hence the different
default from gRPC. Rotated certificate files are picked up at the next handshake
(security/tls.py `reloading_ssl_context`). The verified certificate's identity goes into the
ASGI scope (`routes.PEER_IDENTITY`), so tokens bound to a certificate work here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from autoglm.server.api.openai.routes import PEER_IDENTITY, FrontDoor, build_app
from autoglm.server.security.tls import peer_identity_of_cert, reloading_ssl_context
from autoglm.server.settings import TlsSettings, split_host_port

log = logging.getLogger("autoglm.server.openai")


class _IdentityProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the client certificate's identity in each request's
    scope. Computed once per connection: the handshake is over when `connection_made` runs."""

    _peer: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = peer_identity_of_cert(transport.get_extra_info("peercert"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {PEER_IDENTITY: self._peer}  # type: ignore[typeddict-unknown-key]


@dataclass
class RunningHttp:
    server: uvicorn.Server
    port: int
    sock: socket.socket
    _loop_task: asyncio.Task[None]

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, give open responses `grace` seconds, then cancel what is left."""
        self.server.config.timeout_graceful_shutdown = grace if grace is not None else 0
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        await self.server.shutdown()


def _bind(listen: str, *, reuse_port: bool) -> socket.socket:
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listener's proto is IPPROTO_TCP (asyncio/base_events.py `_set_nodelay`). With Nagle on, the
    # first SSE event waits for the client's delayed ACK of the headers: +40 ms of TTFT.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # several façade workers share the port, as they do gRPC's (workers.py)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def start_http(
    door: FrontDoor,
    listen: str,
    *,
    tls: TlsSettings | None,
    require_client_cert: bool,
    reuse_port: bool = False,
) -> RunningHttp:
    """Serve the front door on `listen` (port 0 = a free one); `tls` None = plaintext, which
    settings allow only in insecure dev mode on loopback."""
    ssl_context = None
    if tls is not None:
        ssl_context, _files = reloading_ssl_context(
            tls.cert,
            tls.key,
            tls.client_ca,
            require_client_cert=require_client_cert,
            min_version=tls.min_version,
        )
    sock = _bind(listen, reuse_port=reuse_port)
    factory: Any = (lambda _config, _default: ssl_context) if ssl_context else None
    config = uvicorn.Config(
        build_app(door),
        http=_IdentityProtocol,
        loop="none",  # the façade's running loop
        lifespan="off",
        access_log=False,  # one line per call comes from calls.py, without prompt text
        log_config=None,  # the façade's logging (telemetry/logs.py)
        server_header=False,
        ssl_context_factory=factory,
        # Uvicorn needs a file for its own TLS setup; the factory above replaces it.
        ssl_certfile=str(tls.cert) if tls else None,
        timeout_keep_alive=75,  # longer than common load balancers' idle timeout (60 s)
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    # main_loop keeps the Date header fresh and watches should_exit.
    loop_task = asyncio.create_task(server.main_loop())
    port = sock.getsockname()[1]
    scheme = "https" if tls else "http"
    host, _ = split_host_port(listen)
    log.info("OpenAI-compatible API on %s://%s:%d/v1", scheme, host, port)
    return RunningHttp(server, port, sock, loop_task)
