"""The OpenAI path's client (bench/openai_sse.py) against a stand-in front door
(openai_standin.py: uvicorn, real TLS on loopback; not the product — test_smoke.py runs the bench
against the real façade): timing, counts from usage, keep-alive, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from autoglm.bench.loadgen import LoadSpec, Recount, run_load, timed
from autoglm.bench.openai_sse import OpenAIPath
from autoglm.bench.workload import BenchRequest, LengthDist, Workload
from autoglm.server.devstack.pki import DevPki, ensure_dev_pki
from tests.bench.openai_standin import TOKEN, bound_port, standin_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


def _req(max_tokens: int = 5, prompt: str = "hello") -> BenchRequest:
    return BenchRequest(prompt, (1, 2), max_tokens)


def _path(pki: DevPki, port: int, model: str = "standin", token: str = TOKEN) -> OpenAIPath:
    return OpenAIPath(f"127.0.0.1:{port}", pki, token, model)


async def test_one_token_a_chunk_and_keep_alive(pki: DevPki) -> None:
    async with standin_server(pki.server_cert, pki.server_key) as server:
        path = _path(pki, bound_port(server))
        try:
            counts = [n async for n in path.stream(_req(5))]
            assert counts == [1] * 5  # usage agrees with the chunks: no recount
            for _ in range(3):
                record = await timed(path.stream, _req(7))
                assert record.ok and record.tokens == 7 and len(record.chunks) == 7
                times = [t for t, _ in record.chunks]
                assert record.start < times[0] and times == sorted(times)
            assert path.connections_opened == 1  # one request after another: one connection
        finally:
            await path.close()


async def test_coalesced_chunks_are_recounted_from_usage(pki: DevPki) -> None:
    async with standin_server(pki.server_cert, pki.server_key) as server:
        path = _path(pki, bound_port(server), "standin-coalesced")
        try:
            got = [n async for n in path.stream(_req(5))]
            # three chunks with text (" tok0 tok1", " tok2 tok3", " tok4"), then the counts
            assert got == [1, 1, 1, Recount((2, 2, 1))]
            record = await timed(path.stream, _req(5))
            assert record.ok and [n for _, n in record.chunks] == [2, 2, 1]
        finally:
            await path.close()


async def test_concurrent_streams_take_a_connection_each(pki: DevPki) -> None:
    async with standin_server(pki.server_cert, pki.server_key) as server:
        path = _path(pki, bound_port(server))
        wl = Workload(LengthDist(4, 4), LengthDist(20, 20), lambda s: [1] * len(s), lambda i: "x")
        try:
            spec = LoadSpec(concurrency=8, warmup_s=0.0, duration_s=None, num_requests=40)
            result = await run_load(path.stream, wl, spec)
            assert len(result.records) >= 40
            assert all(r.ok and r.tokens == 20 for r in result.records)
            assert path.connections_opened <= 8
        finally:
            await path.close()


async def test_refusals_and_errors_get_their_status(pki: DevPki) -> None:
    async with standin_server(pki.server_cert, pki.server_key) as server:
        port = bound_port(server)
        bad = _path(pki, port, token="wrong")
        good = _path(pki, port)
        try:
            record = await timed(bad.stream, _req())
            assert record.status == "HTTP_401" and record.chunks == ()
            record = await timed(good.stream, _req(prompt="fail-mid"))
            assert record.status == "SSE_ERROR" and record.tokens == 1
            # the connection of the failed stream is not reused; the next request works
            assert (await timed(good.stream, _req())).ok
            assert good.connections_opened == 2
            status, body = await good.get("/v1/models")
            assert status == 200 and orjson.loads(body)["data"][0]["id"] == "standin"
        finally:
            await bad.close()
            await good.close()


async def test_a_connection_the_server_closed_when_idle_is_replaced(pki: DevPki) -> None:
    async with standin_server(pki.server_cert, pki.server_key, keep_alive_s=0.2) as server:
        path = _path(pki, bound_port(server))
        try:
            assert (await timed(path.stream, _req())).ok
            idle = path._pool._idle[0]
            await asyncio.wait_for(idle.lost.wait(), 10)  # the server's keep-alive timeout
            assert (await timed(path.stream, _req())).ok
            assert path.connections_opened == 2
        finally:
            await path.close()


def test_request_asks_for_what_the_grpc_path_asks(tmp_path: Path) -> None:
    """Same prompt text and max_tokens, temperature 0, streamed with usage (facade.py)."""
    path = OpenAIPath("127.0.0.1:1", ensure_dev_pki(tmp_path / "pki"), "t", "m")
    body = orjson.loads(path.request_body(_req(9, "It is a truth")))
    assert body == {
        "model": "m",
        "prompt": "It is a truth",
        "max_tokens": 9,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_a_reused_connection_closed_before_answering_is_retried_once(pki: DevPki) -> None:
    """The race keep-alive leaves: the server closes an idle connection just as the client sends
    on it. A raw TLS server answers each connection's first request and closes the connection
    on its second without a byte, so the client must send that request again on a new one."""
    import ssl

    answered: list[int] = []
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    events = (
        b'data: {"choices": [{"index": 0, "text": " a", "finish_reason": "length"}]}\n\n'
        b'data: {"choices": [], "usage": {"completion_tokens": 1}}\n\ndata: [DONE]\n\n'
    )
    response += b"%x\r\n%s\r\n0\r\n\r\n" % (len(events), events)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if not first:
                break
            answered.append(id(writer))
            writer.write(response)
            await writer.drain()
            first = False
        writer.close()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    path = _path(pki, port)
    try:
        for _ in range(3):
            record = await timed(path.stream, _req(1))
            assert record.ok and record.tokens == 1, record.status
        assert len(answered) == 3 and path.connections_opened == 3
    finally:
        await path.close()
        server.close()
        await server.wait_closed()
