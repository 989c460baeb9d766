"""Path (c): the façade's OpenAI-compatible front door, `POST /v1/completions` streamed as
Server-Sent Events over HTTPS with a bearer token, as the `openai` SDK sends it.

A lean client, so that the load generator does not take the CPU the façade needs on a small
machine (its own CPU is measured: the "loadgen" group, runner.py): asyncio's own TLS transport
(`loop.create_connection(ssl=…)`), httptools (llhttp, uvicorn's parser) for the HTTP/1.1
response framing and chunked transfer coding, sse.py for the events and orjson for the chunks.
No HTTP library with its own pools, timeouts and header models on every chunk.

HTTP/1.1 carries one response at a time per connection (RFC 9112 §9.3: pipelining, which the
bench does not use, would still answer in order), so where the gRPC path multiplexes its
streams over one HTTP/2 connection, this path keeps one keep-alive connection per stream in
flight: the pool opens a connection when none is idle and reuses idle ones, so after the
warm-up a level at c=64 runs on 64 connections and opens none. A server may close an idle
connection (uvicorn's keep-alive timeout, 5 s by default, runs out while other paths are
measured); a request sent on a reused connection that closes before any byte of an answer is
sent once more on a new one, as HTTP clients do (RFC 9112 §9.3.1).

The request asks for what the gRPC path asks for (facade.py): the same prompt text (the
façade tokenizes it as it does the gRPC `prompt`), `max_tokens` and temperature 0, and nothing
else that changes the work; `stream_options.include_usage` for the token count.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httptools
import orjson

from autoglm.bench.loadgen import Recount
from autoglm.bench.sse import DONE, SseParser, StreamError, read_chunk, token_split
from autoglm.bench.workload import BenchRequest
from autoglm.server.devstack.pki import DevPki


def client_context(pki: DevPki, *, client_cert: bool = False) -> ssl.SSLContext:
    """TLS trusting the dev PKI's CA (as `SSL_CERT_FILE` makes the `openai` SDK do); with
    `client_cert` also presenting the dev client certificate (the front door's default takes
    the token alone, as OpenAI clients cannot present one)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if client_cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one response at a time, parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._sse: SseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.lost = asyncio.Event()  # set when the connection has gone
        self._reset(sse=False)

    def _reset(self, *, sse: bool) -> None:
        self.status = 0
        self.events: list[bytes] = []  # SSE `data` payloads not taken yet
        self.body: list[bytes] = []  # the body of a response that is not an event stream
        self.complete = False
        self.keep_alive = False  # read at the message's end (llhttp resets it after)
        self.received = False  # a byte of the answer arrived
        self.error: BaseException | None = None
        self._sse = SseParser() if sse else None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = exc
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        # The server closed its side: an HTTP/1.1 connection is done then (False: close ours).
        self.closed = True
        if not self.complete and self.error is None:
            self.error = ConnectionError("the server closed the connection mid-response")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost.set()
        if not self.complete and self.error is None:
            self.error = ConnectionError(f"connection closed mid-response: {exc or 'EOF'}")
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._sse is not None and self.status == 200:
            self.events += self._sse.feed(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True

    # -- use ---------------------------------------------------------------------------------
    def send(self, data: bytes, *, sse: bool) -> None:
        assert self.transport is not None
        self._reset(sse=sse)
        self.transport.write(data)

    def take(self) -> list[bytes]:
        events, self.events = self.events, []
        return events

    async def wait(self) -> None:
        """Until something arrived (events, the end, an error) since the last take()."""
        while not (self.events or self.complete or self.error is not None):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class ConnectionPool:
    """Keep-alive HTTPS connections to one server: idle ones reused (latest first), new ones
    opened when none is idle. `opened` counts connections made (a figure for the report)."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self._host, self._port, self._ctx = host, port, ctx
        self._idle: list[_Connection] = []
        self.opened = 0

    async def acquire(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection and whether it was reused."""
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            _Connection, self._host, self._port, ssl=self._ctx, server_hostname=self._host
        )
        self.opened += 1
        return conn, False

    def release(self, conn: _Connection) -> None:
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _error(conn: _Connection) -> StreamError:
    """The server's refusal (`{"error": {"message", …}}`, issue #21) as a StreamError."""
    raw = b"".join(conn.body)
    try:
        message = orjson.loads(raw)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = raw[:300].decode(errors="replace")
    return StreamError(f"HTTP_{conn.status}", str(message))


class OpenAIPath:
    """`stream(req)`: the token counts of one `/v1/completions` stream (loadgen.Stream)."""

    def __init__(
        self,
        endpoint: str,
        pki: DevPki,
        token: str,
        model: str,
        *,
        client_cert: bool = False,
        name: str = "openai",
        route: str = "/v1/completions",  # image_paths.py: /v1/chat/completions
    ) -> None:
        self.name = name
        host, _, port = endpoint.rpartition(":")
        self._pool = ConnectionPool(host, int(port), client_context(pki, client_cert=client_cert))
        self._model = model
        self._headers = f"Host: {endpoint}\r\nAuthorization: Bearer {token}\r\n"
        self._head = (
            f"POST {route} HTTP/1.1\r\n{self._headers}Content-Type: application/json\r\n"
            "Accept: text/event-stream\r\nContent-Length: "
        ).encode()

    @property
    def connections_opened(self) -> int:
        return self._pool.opened

    def request_body(self, req: BenchRequest) -> bytes:
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": req.prompt,
            "max_tokens": req.max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return orjson.dumps(body)

    async def _send(self, data: bytes) -> _Connection:
        """Send on a pooled connection; once more on a new one if a reused connection turns out
        closed before any byte of the answer (the server's keep-alive ran out)."""
        conn, reused = await self._pool.acquire()
        conn.send(data, sse=True)
        await conn.wait()
        if reused and conn.error is not None and not conn.received:
            conn.close()
            conn, _ = await self._pool.acquire(fresh=True)
            conn.send(data, sse=True)
            await conn.wait()
        return conn

    async def stream(self, req: BenchRequest) -> AsyncIterator[int | Recount]:
        body = self.request_body(req)
        conn = await self._send(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
        weights: list[int] = []  # text length of each chunk that carried text
        total: int | None = None
        done = False
        finished = False
        try:
            while True:
                if conn.error is not None:
                    raise conn.error
                if conn.status != 200 and conn.complete:
                    raise _error(conn)
                for data in conn.take():
                    if data == DONE:
                        done = True
                        continue
                    chunk = read_chunk(orjson.loads(data))
                    if chunk.text:
                        weights.append(len(chunk.text))
                        yield 1  # timed on arrival; the true counts follow (Recount)
                    if chunk.completion_tokens is not None:
                        total = chunk.completion_tokens
                if conn.complete:
                    break
                await conn.wait()
            if not done:
                raise StreamError("SSE_NO_DONE", "the event stream ended without data: [DONE]")
            if total is None:
                raise StreamError("SSE_NO_USAGE", "no usage chunk (stream_options.include_usage)")
            counts = token_split(total, weights)
            if total != len(weights):
                yield Recount(tuple(counts))
            finished = True
        finally:
            if finished:
                self._pool.release(conn)
            else:
                conn.close()  # mid-response (an error, or the caller gone): not reusable

    async def get(self, path: str) -> tuple[int, bytes]:
        """A plain GET (e.g. /v1/models): status and body."""
        head = f"GET {path} HTTP/1.1\r\n{self._headers}\r\n".encode()
        conn, _ = await self._pool.acquire(fresh=True)
        conn.send(head, sse=False)
        while not conn.complete:
            if conn.error is not None:
                conn.close()
                raise conn.error
            await conn.wait()
        self._pool.release(conn)
        return conn.status, b"".join(conn.body)

    async def close(self) -> None:
        self._pool.close()
