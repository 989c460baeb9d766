"""A STAND-IN for the façade's OpenAI front door, for testing the bench's client alone: uvicorn
(the ASGI server the front door runs on) with real TLS on a loopback port, serving
`POST /v1/completions` as OpenAI-shaped Server-Sent Events and `GET /v1/models`. It generates
nothing: it streams `max_tokens` made-up tokens. It is not the product; the smoke test
(test_smoke.py) runs the bench against the real façade.

What it does, by request:
- model "standin": one token a chunk; "standin-coalesced": two tokens a chunk (as the façade
  coalesces when the engine is ahead of the client);
- prompt "fail-mid": an `error` event after the first chunk, then the end of the stream;
- a bearer token other than TOKEN: 401 with the OpenAI error shape.
Every event goes out in three HTTP chunks cut inside it, so the client reads events split
across reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKEN = "standin-token"


def _unauthorized() -> Response:
    err = {"message": "bad key", "type": "invalid_request_error", "param": None, "code": None}
    return JSONResponse({"error": err}, status_code=401)


def _authorized(request: Request) -> bool:
    return request.headers.get("authorization") == f"Bearer {TOKEN}"


async def _events(body: dict) -> AsyncIterator[bytes]:
    model = body["model"]
    per_chunk = 2 if model == "standin-coalesced" else 1
    n = body["max_tokens"]
    base = {"id": "cmpl-standin", "object": "text_completion", "created": int(time.time())}
    base["model"] = model
    sent = 0
    while sent < n:
        k = min(per_chunk, n - sent)
        text = "".join(f" tok{sent + i}" for i in range(k))
        sent += k
        choice = {"index": 0, "text": text, "finish_reason": "length" if sent == n else None}
        yield orjson.dumps({**base, "choices": [choice]})
        if body["prompt"] == "fail-mid":
            yield orjson.dumps({"error": {"message": "engine gone", "type": "server_error"}})
            return
        await asyncio.sleep(0)
    if body.get("stream_options", {}).get("include_usage"):
        usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}
        yield orjson.dumps({**base, "choices": [], "usage": usage})
    yield b"[DONE]"


async def _split(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for data in events:
        event = b"data: " + data + b"\n\n"
        cut = len(event) // 2
        yield event[:3]  # inside the field name
        yield event[3:cut]
        yield event[cut:]


async def completions(request: Request) -> Response:
    if not _authorized(request):
        return _unauthorized()
    body = orjson.loads(await request.body())
    return StreamingResponse(_split(_events(body)), media_type="text/event-stream")


async def models(request: Request) -> Response:
    if not _authorized(request):
        return _unauthorized()
    data = [{"id": m, "object": "model"} for m in ("standin", "standin-coalesced")]
    return JSONResponse({"object": "list", "data": data})


APP = Starlette(
    routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]
)


@contextlib.asynccontextmanager
async def standin_server(
    cert: Path, key: Path, *, keep_alive_s: float = 5.0
) -> AsyncIterator[uvicorn.Server]:
    """Serve APP on 127.0.0.1 (a port the kernel picks: `server.servers[0]`) until the block
    ends; ready when entered."""
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    # (base_events._set_nodelay); with Nagle on, each small SSE write after the first waits for
    # the peer's delayed ACK (40 ms on Linux).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        APP,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        http="httptools",
        loop="asyncio",
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=keep_alive_s,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises why it stopped
        await asyncio.sleep(0.01)  # waiting on the condition `started`
    try:
        yield server
    finally:
        server.should_exit = True
        await task


def bound_port(server: uvicorn.Server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]
