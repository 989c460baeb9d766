"""BENCHMARK TOOL, not a product path: the floor under any Python façade process (issue #8).

A process that forwards bytes, and does nothing else, between a unix socket it listens on and
Triton's gRPC unix socket. `autoglm bench --floor` sends the direct path's own bare consumer
through it ("hop"): the same gRPC calls to the same Triton, with one more Python process on
the way, which parses nothing, encrypts nothing and holds no state but the two sockets.

Whatever it adds to the first token and to the inter-token tail is what one more process on
the way costs on the machine at hand, before any protocol work: no façade written in Python,
however lean, can add less. It accepts anything its socket's directory lets through and
forwards it to Triton: never expose it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path


class _Pipe(asyncio.Protocol):
    """One direction's reader: what arrives on this transport is written to `peer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def attach(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        for chunk in self._early:
            peer.write(chunk)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)  # the caller spoke before Triton's side was connected
        else:
            self.peer.write(data)

    def eof_received(self) -> bool | None:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
            return True  # keep the other direction open until it ends too
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


class _Caller(_Pipe):
    """The side the consumer connects to: opens the matching connection to Triton."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self._target = target
        self._connecting: asyncio.Task[None] | None = None  # held: the loop keeps weak refs

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        try:
            upstream, pipe = await loop.create_unix_connection(_Pipe, self._target)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():  # the caller left while Triton's side was connecting
            upstream.close()
            return
        pipe.attach(self.transport)
        self.attach(upstream)


async def start(listen: Path, target: str) -> asyncio.Server:
    """Listening (only its owner may connect) once this returns."""
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _Caller(target), str(listen))
    os.chmod(listen, 0o600)
    return server


async def serve(listen: Path, target: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await start(listen, target)
    print(f"byte hop listening on {listen}", flush=True)  # stack.py waits for this line
    try:
        await stop.wait()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=Path, required=True, help="unix socket path to listen on")
    p.add_argument("--triton", required=True, help="Triton's gRPC target, unix:/path")
    args = p.parse_args(argv)
    if not args.triton.startswith("unix:"):
        p.error(f"--triton: a unix:/path target is needed, got {args.triton!r}")
    try:
        asyncio.run(serve(args.listen, args.triton.removeprefix("unix:")))
    finally:
        with contextlib.suppress(FileNotFoundError):
            args.listen.unlink()  # Python 3.11's unix server leaves its socket file behind
    return 0


if __name__ == "__main__":
    sys.exit(main())
