"""reader.py against an independent HTTP/2 implementation (python-hyper's h2, server side)
over real loopback TCP: framing, flow control, errors, GOAWAY, deadlines, cancellation.

The peer here is a scripted stand-in for Triton (a test double for protocol edge cases a real
Triton will not produce on demand); the façade's reads from the real Triton are covered by the
integration suite, which runs on this reader.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from autoglm.server.engine import reader

Script = Callable[["Peer", int, list[tuple[bytes, bytes]], bytes], Awaitable[None]]


def msg(payload: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BL", compressed, len(payload)) + payload


class Peer:
    """An h2 server: for every call, `script(peer, stream_id, headers, request)` answers."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.resets: list[tuple[int, int]] = []  # (stream id, error code) the client sent
        self.half_closed: list[int] = []  # streams the client ended its side of (END_STREAM)
        self.requests: list[tuple[list[tuple[bytes, bytes]], bytes]] = []
        self.pings_acked = 0
        self.connections = 0
        self.conn: h2.connection.H2Connection | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        for t in self._tasks:
            t.cancel()

    def flush(self) -> None:
        assert self.conn is not None and self.writer is not None
        self.writer.write(self.conn.data_to_send())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        self.conn, self.writer = conn, writer
        writer.write(conn.data_to_send())
        headers: dict[int, list[tuple[bytes, bytes]]] = {}
        bodies: dict[int, bytearray] = {}
        while data := await reader.read(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    headers[ev.stream_id] = list(ev.headers)
                    bodies[ev.stream_id] = bytearray()
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    body = bodies[ev.stream_id]
                    body += ev.data
                    if len(body) >= 5 and len(body) == 5 + struct.unpack_from(">L", body, 1)[0]:
                        request = bytes(body[5:])
                        self.requests.append((headers[ev.stream_id], request))
                        task = asyncio.create_task(
                            self.script(self, ev.stream_id, headers[ev.stream_id], request)
                        )
                        self._tasks.add(task)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.half_closed.append(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    self.resets.append((ev.stream_id, ev.error_code))
                elif isinstance(ev, h2.events.PingAckReceived):
                    self.pings_acked += 1
            writer.write(conn.data_to_send())
        writer.close()


def ok_headers() -> list[tuple[bytes, bytes]]:
    return [(b":status", b"200"), (b"content-type", b"application/grpc")]


async def endpoint_for(peer: Peer, **kw: object) -> reader.Endpoint:
    port = await peer.start()
    return reader.Endpoint(
        "127.0.0.1",
        port,
        ssl_context=None,
        server_hostname=None,
        metadata=[("triton-grpc-protocol-autoglm-facade", "s3cret")],
        **kw,  # type: ignore[arg-type]
    )


def until(last: bytes, into: list[bytes]) -> Callable[[bytes], bool]:
    def on_message(payload: bytes) -> bool:
        into.append(payload)
        return payload == last

    return on_message


async def test_messages_in_any_framing_then_the_stream_ends_on_the_trailers() -> None:
    trailers = asyncio.Event()

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        one, two, three = msg(b"one"), msg(b"two" * 3), msg(b"last")
        peer.conn.send_data(sid, one[:3])  # a message split over frames
        peer.flush()
        await asyncio.sleep(0.01)
        peer.conn.send_data(sid, one[3:] + two, pad_length=7)  # padded, two messages at once
        peer.conn.send_data(sid, three)
        peer.flush()
        await trailers.wait()
        peer.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    got: list[bytes] = []
    await ep.call(b"req", until(b"last", got), metadata=[("traceparent", "00-ab-cd-01")], timeout=9)
    assert got == [b"one", b"twotwotwo", b"last"]  # returned at the last message, not later
    (conn,) = ep._connections
    assert conn.open_calls == 1  # the stream waits for Triton's own end ...
    assert ep.finishing_calls == 1
    finished = asyncio.ensure_future(ep.finished())  # what EngineClient.close waits for
    await asyncio.sleep(0.02)
    assert not finished.done()
    trailers.set()
    await asyncio.sleep(0.05)
    assert conn.open_calls == 0  # ... and is gone with it
    assert ep.finishing_calls == 0 and finished.done()
    ((headers, request),) = peer.requests
    h = dict(headers)
    assert request == b"req"
    assert h[b":path"] == b"/inference.GRPCInferenceService/ModelStreamInfer"
    assert h[b":method"] == b"POST" and h[b":scheme"] == b"http"
    assert h[b"content-type"] == b"application/grpc" and h[b"te"] == b"trailers"
    assert h[b"triton-grpc-protocol-autoglm-facade"] == b"s3cret"
    assert h[b"traceparent"] == b"00-ab-cd-01"
    assert h[b"grpc-timeout"] == b"9000m"
    assert peer.half_closed == [1]  # the request went with END_STREAM
    assert peer.resets == []  # a finished call is not cancelled (Triton 2.51 could leak it)
    ep.close()
    await peer.stop()


async def test_a_finished_call_without_trailers_is_reset_after_the_grace() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        peer.conn.send_data(sid, msg(b"last"))
        peer.flush()  # and never the trailers

    peer = Peer(script)
    ep = await endpoint_for(peer, finish_grace_s=0.2)
    got: list[bytes] = []
    await ep.call(b"req", until(b"last", got), timeout=9)
    assert got == [b"last"] and peer.resets == []
    await asyncio.sleep(0.4)
    assert peer.resets == [(1, reader.CANCEL)]
    assert ep._connections[0].open_calls == 0 and ep.finishing_calls == 0
    await asyncio.wait_for(ep.finished(), 1)
    ep.close()
    await peer.stop()


async def test_many_calls_share_one_connection() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        for i in range(5):
            peer.conn.send_data(sid, msg(request + b"-%d" % i))
            peer.flush()
            await asyncio.sleep(0)

    peer = Peer(script)
    ep = await endpoint_for(peer)
    results: dict[int, list[bytes]] = {}

    async def one(i: int) -> None:
        got = results.setdefault(i, [])
        await ep.call(b"r%d" % i, until(b"r%d-4" % i, got))

    await asyncio.gather(*(one(i) for i in range(20)))
    assert peer.connections == 1
    assert all(results[i] == [b"r%d-%d" % (i, k) for k in range(5)] for i in range(20))
    ep.close()
    await peer.stop()


@pytest.mark.parametrize(
    ("status", "message", "code", "details"),
    [
        (b"5", b"model%20not%20found", grpc.StatusCode.NOT_FOUND, "model not found"),
        (b"14", b"", grpc.StatusCode.UNAVAILABLE, ""),
        (b"0", b"", grpc.StatusCode.UNAVAILABLE, "the call ended before its final response"),
    ],
)
async def test_trailers_only_status(
    status: bytes, message: bytes, code: grpc.StatusCode, details: str
) -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        trailers = [*ok_headers(), (b"grpc-status", status), (b"grpc-message", message)]
        peer.conn.send_headers(sid, trailers, end_stream=True)
        peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"x", until(b"never", []))
    assert (err.value.code, err.value.details) == (code, details)
    ep.close()
    await peer.stop()


async def test_trailers_after_messages_and_http_errors() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        if request == b"http":
            peer.conn.send_headers(sid, [(b":status", b"503")], end_stream=True)
        else:
            peer.conn.send_headers(sid, ok_headers())
            peer.conn.send_data(sid, msg(b"a"))
            peer.conn.send_headers(
                sid, [(b"grpc-status", b"13"), (b"grpc-message", b"boom")], end_stream=True
            )
        peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    got: list[bytes] = []
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"trailers", until(b"never", got))
    assert got == [b"a"] and err.value.code == grpc.StatusCode.INTERNAL
    assert err.value.details == "boom"
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"http", until(b"never", []))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "503" in err.value.details
    ep.close()
    await peer.stop()


async def test_handler_error_and_compressed_message_end_the_call() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        peer.conn.send_data(sid, msg(b"z", compressed=1 if request == b"gz" else 0))
        peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)

    def boom(payload: bytes) -> bool:
        raise ValueError(f"bad {payload!r}")

    with pytest.raises(ValueError, match="bad b'z'"):
        await ep.call(b"x", boom)
    with pytest.raises(reader.CallError, match="compressed"):
        await ep.call(b"gz", until(b"never", []))
    await asyncio.sleep(0.05)
    assert sorted(peer.resets) == [(1, reader.CANCEL), (3, reader.CANCEL)]
    ep.close()
    await peer.stop()


async def test_large_request_waits_for_the_peers_window() -> None:
    """A 300 kB request exceeds the peer's 64 KiB windows and 16 KiB frames."""

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        peer.conn.send_data(sid, msg(b"%d" % len(request)))
        peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    got: list[bytes] = []
    big = bytes(range(256)) * 1200
    await asyncio.wait_for(ep.call(big, until(b"%d" % len(big), got)), 10)
    assert peer.requests[0][1] == big
    assert peer.half_closed == [1]  # END_STREAM went with the last chunk only
    ep.close()
    await peer.stop()


async def test_deadline_and_cancellation_reset_the_stream() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        peer.conn.send_data(sid, msg(b"first"))
        peer.flush()  # and nothing more

    peer = Peer(script)
    ep = await endpoint_for(peer)
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"x", until(b"never", []), timeout=0.2)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    first = asyncio.Event()

    def on_message(payload: bytes) -> bool:
        first.set()
        return False

    task = asyncio.create_task(ep.call(b"y", on_message))
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert peer.resets == [(1, reader.CANCEL), (3, reader.CANCEL)]
    ep.close()
    await peer.stop()


async def test_goaway_and_lost_connection_fail_calls_and_reconnect() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None and peer.writer is not None
        if request == b"goaway":
            peer.conn.close_connection(last_stream_id=0)
            peer.flush()
        elif request == b"drop":
            peer.writer.transport.abort()
        else:
            peer.conn.send_headers(sid, ok_headers())
            peer.conn.send_data(sid, msg(b"fine"))
            peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"goaway", until(b"never", []))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "GOAWAY" in err.value.details
    await ep.call(b"ok", until(b"fine", []))
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"drop", until(b"never", []))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "lost" in err.value.details
    await ep.call(b"ok", until(b"fine", []))
    assert peer.connections == 3
    ep.close()
    await peer.stop()


async def test_ping_is_answered_and_big_headers_use_continuation() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.ping(b"12345678")
        # A header block over 16 KiB: h2 sends HEADERS + CONTINUATION frames.
        peer.conn.send_headers(sid, [*ok_headers(), (b"x-big", b"v" * 40_000)])
        peer.conn.send_data(sid, msg(b"done"))
        peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    await ep.call(b"x", until(b"done", []))
    await asyncio.sleep(0.05)
    assert peer.pings_acked == 1
    ep.close()
    await peer.stop()


async def test_refused_connection_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    ep = reader.Endpoint("127.0.0.1", port, ssl_context=None, server_hostname=None, metadata=())
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"x", until(b"never", []))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{port}" in err.value.details


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (0.0001, b"1m"),
        (9, b"9000m"),
        (99_999.999, b"99999999m"),
        (100_000, b"100000S"),
        (10**9, b"99999999S"),
    ],
)
def test_grpc_timeout_has_at_most_eight_digits(seconds: float, header: bytes) -> None:
    assert reader.grpc_timeout(seconds) == header


async def test_connections_detect_a_vanished_peer() -> None:
    """Kernel keepalive + TCP_USER_TIMEOUT on every connection (reader.detect_dead_peer):
    a Triton host that disappears without a RST fails its calls within about a minute."""

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        peer.conn.send_data(sid, msg(b"last"))
        peer.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    await ep.call(b"req", until(b"last", []), timeout=9)
    transport = ep._connections[0]._transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if sys.platform.startswith("linux"):
        tcp = socket.IPPROTO_TCP
        assert sock.getsockopt(tcp, socket.TCP_KEEPIDLE) == reader.KEEPALIVE_IDLE_S
        assert sock.getsockopt(tcp, socket.TCP_KEEPINTVL) == reader.KEEPALIVE_INTERVAL_S
        assert sock.getsockopt(tcp, socket.TCP_KEEPCNT) == reader.KEEPALIVE_PROBES
        assert sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == reader.USER_TIMEOUT_MS
    ep.close()
    await peer.stop()
