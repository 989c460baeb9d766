"""The front door's HTTP server itself: real uvicorn on a loopback port, plaintext (the
insecure-dev form; TLS is tested in tests/server/security/test_tls_http.py)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest

from autoglm.server.api.openai.http_server import RunningHttp, start_http
from autoglm.server.api.openai.routes import FrontDoor


@pytest.fixture
async def http() -> AsyncIterator[RunningHttp]:
    ready = [False]
    door = FrontDoor(
        generations=None,  # type: ignore[arg-type]  # health routes only
        tokens=None,
        max_body_bytes=1024,
        ready=lambda: ready[0],
        on_auth_failure=lambda _reason: None,
    )
    running = await start_http(door, "127.0.0.1:0", tls=None, require_client_cert=False)
    running.ready = ready  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        await running.stop(0.5)


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_accepted_connections_have_nagle_off(http: RunningHttp) -> None:
    # With Nagle on, the first SSE event after the headers waits for the client's delayed ACK
    # (~40 ms on Linux): every stream's time to first token would carry it.
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    (conn,) = http.server.server_state.connections
    sock = conn.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    writer.close()


async def test_liveness_and_readiness(http: RunningHttp) -> None:
    assert await get(http.port, "/healthz") == (200, b'{"status":"alive"}')
    assert (await get(http.port, "/readyz"))[0] == 503
    http.ready[0] = True  # type: ignore[attr-defined]
    assert await get(http.port, "/readyz") == (200, b'{"status":"ready"}')
    status, body = await get(http.port, "/v1/embeddings")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"
