"""reader.py against an independent HTTP/2 peer (python-hyper's h2, server side, its own state
machine and HPACK encoder) over real sockets — loopback TCP, a unix socket, mTLS: framing,
flow control, errors, GOAWAY, RST_STREAM, deadlines, cancellation.

The peer is a scripted stand-in for Triton (a test double for protocol edge cases a real Triton
will not produce on demand); the façade's reads from the real Triton are covered by the
integration suite (test_engine_readers.py and the others), which runs on this reader.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame

from autoglm.server.devstack.pki import ensure_dev_pki
from autoglm.server.engine import reader
from autoglm.server.security.tls import client_ssl_context

Script = Callable[["Peer", int, list[tuple[bytes, bytes]], bytes], Awaitable[None]]
SECRET = ("triton-grpc-protocol-autoglm-facade", "s3cret")


def msg(payload: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BL", compressed, len(payload)) + payload


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `condition()` holds (tests wait on conditions, never on a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


class Peer:
    """An h2 server: for every call, `script(peer, stream_id, headers, request)` answers."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.resets: list[tuple[int, int]] = []  # (stream id, error code) the client sent
        self.half_closed: list[int] = []  # streams the client ended its side of (END_STREAM)
        self.requests: list[tuple[list[tuple[bytes, bytes]], bytes]] = []
        self.pings_acked = 0
        self.connections = 0
        self.goaways: list[int] = []  # error codes of the client's GOAWAYs
        self.conn: h2.connection.H2Connection | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self, *, unix_path: str | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> int:
        if unix_path is not None:
            self.server = await asyncio.start_unix_server(self._serve, unix_path, ssl=ssl_context)
            return 0
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.close()
        for t in self._tasks:
            t.cancel()

    def flush(self) -> None:
        assert self.conn is not None and self.writer is not None
        self.writer.write(self.conn.data_to_send())

    def raw(self, data: bytes) -> None:
        """Bytes past the peer's h2 (frames h2 would refuse to send, or GOAWAY without
        closing h2's own state)."""
        assert self.writer is not None
        self.flush()
        self.writer.write(data)

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
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaways.append(ev.error_code)
            if conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
                writer.write(conn.data_to_send())
        writer.close()


def ok_headers() -> list[tuple[bytes, bytes]]:
    return [(b":status", b"200"), (b"content-type", b"application/grpc")]


def answer(peer: Peer, sid: int, *payloads: bytes, trailers: bool = True) -> None:
    assert peer.conn is not None
    peer.conn.send_headers(sid, ok_headers())
    for p in payloads:
        peer.conn.send_data(sid, msg(p))
    if trailers:
        peer.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    peer.flush()


async def endpoint_for(peer: Peer, **kw: object) -> reader.Endpoint:
    port = await peer.start()
    return reader.Endpoint(
        "127.0.0.1",
        port,
        ssl_context=None,
        server_hostname=None,
        metadata=[SECRET],
        **kw,  # type: ignore[arg-type]
    )


def until(last: bytes, into: list[bytes]) -> Callable[[bytes], bool]:
    def on_message(payload: bytes) -> bool:
        into.append(payload)
        return payload == last

    return on_message


def open_calls(ep: reader.Endpoint) -> int:
    return sum(c.open_calls for c in ep._connections)


async def test_messages_in_any_framing_then_the_stream_ends_on_the_trailers() -> None:
    trailers = asyncio.Event()

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        one, two, three = msg(b"one"), msg(b"two" * 3), msg(b"last")
        peer.conn.send_data(sid, one[:3])  # a message split over frames ...
        peer.flush()
        await peer.writer.drain()  # type: ignore[union-attr]
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
    assert not finished.done()
    trailers.set()
    await asyncio.wait_for(finished, 5)
    assert conn.open_calls == 0  # ... and is gone with it
    assert ep.finishing_calls == 0
    ((headers, request),) = peer.requests
    h = dict(headers)
    assert request == b"req"
    assert h[b":path"] == b"/inference.GRPCInferenceService/ModelStreamInfer"
    assert h[b":method"] == b"POST" and h[b":scheme"] == b"http"
    assert h[b"content-type"] == b"application/grpc" and h[b"te"] == b"trailers"
    assert h[b"triton-grpc-protocol-autoglm-facade"] == b"s3cret"
    assert h[b"traceparent"] == b"00-ab-cd-01"
    assert h[b"grpc-timeout"] == b"9000m"
    # The secret went "never indexed" (RFC 7541 §7.1.3), as the peer's HPACK decoder saw it.
    secret = [f for f in headers if f[0] == b"triton-grpc-protocol-autoglm-facade"]
    assert [type(f) for f in secret] == [hpack.NeverIndexedHeaderTuple]
    assert peer.half_closed == [1]  # the request went with END_STREAM
    assert peer.resets == []  # a finished call is not cancelled (Triton 2.51 could leak it)
    ep.close()
    await peer.stop()


async def test_a_finished_call_without_trailers_is_reset_after_the_grace() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        answer(peer, sid, b"last", trailers=False)  # and never the trailers

    peer = Peer(script)
    ep = await endpoint_for(peer, finish_grace_s=0.2)
    got: list[bytes] = []
    await ep.call(b"req", until(b"last", got), timeout=9)
    assert got == [b"last"] and peer.resets == [] and ep.finishing_calls == 1
    await eventually(lambda: peer.resets == [(1, reader.CANCEL)])
    assert open_calls(ep) == 0 and ep.finishing_calls == 0
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
        (b"x", b"", grpc.StatusCode.INTERNAL, "malformed grpc-status b'x'"),
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
        elif request == b"no-status":
            peer.conn.send_headers(sid, ok_headers())
            peer.conn.send_data(sid, msg(b"a"), end_stream=True)
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
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"no-status", until(b"never", []))
    assert err.value.code == grpc.StatusCode.INTERNAL and "without a status" in err.value.details
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
    await eventually(lambda: sorted(peer.resets) == [(1, reader.CANCEL), (3, reader.CANCEL)])
    ep.close()
    await peer.stop()


async def test_large_request_waits_for_the_peers_window() -> None:
    """A 300 kB request exceeds the peer's 64 KiB windows and 16 KiB frames."""

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        answer(peer, sid, b"%d" % len(request))

    peer = Peer(script)
    ep = await endpoint_for(peer)
    got: list[bytes] = []
    big = bytes(range(256)) * 1200
    await asyncio.wait_for(ep.call(big, until(b"%d" % len(big), got)), 10)
    assert peer.requests[0][1] == big
    assert peer.half_closed == [1]  # END_STREAM went with the last chunk only
    ep.close()
    await peer.stop()


async def test_responses_beyond_the_default_windows_flow() -> None:
    """Our receive windows are the largest allowed and handed back as h2 sees fit: 3 MB of
    responses on one stream (past 64 KiB defaults and our acknowledgement lumps) arrive."""
    chunk = b"y" * 60_000

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        peer.conn.send_headers(sid, ok_headers())
        for _ in range(50):
            data = msg(chunk)
            while data:  # within the peer's frame size and our windows
                n = min(len(data), peer.conn.max_outbound_frame_size)
                n = min(n, peer.conn.local_flow_control_window(sid))
                peer.conn.send_data(sid, data[:n])
                data = data[n:]
            peer.flush()
            await peer.writer.drain()  # type: ignore[union-attr]
        peer.conn.send_data(sid, msg(b"last"))
        peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    got: list[bytes] = []
    await asyncio.wait_for(ep.call(b"x", until(b"last", got)), 10)
    assert got == [chunk] * 50 + [b"last"]
    ep.close()
    await peer.stop()


async def test_deadline_and_cancellation_reset_the_stream() -> None:
    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        answer(peer, sid, b"first", trailers=False)  # and nothing more

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
    await eventually(lambda: peer.resets == [(1, reader.CANCEL), (3, reader.CANCEL)])
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
            answer(peer, sid, b"fine")

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


async def test_a_draining_goaway_lets_the_calls_it_covers_finish() -> None:
    """A gRPC server drains with GOAWAY and then completes the calls up to its last stream id
    (RFC 9113 §6.8): those finish, later ones fail UNAVAILABLE, new calls get a new
    connection. h2 itself closes its state machine on any GOAWAY (reader._on_goaway)."""
    release = asyncio.Event()
    opened: list[int] = []

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        if request == b"after":
            answer(peer, sid, b"done")
            return
        opened.append(sid)
        peer.conn.send_headers(sid, ok_headers())
        peer.flush()
        await release.wait()
        if sid == 1:  # the first call's connection drains: stream 1 done, stream 3 refused
            goaway = GoAwayFrame(0, last_stream_id=1)
            peer.raw(goaway.serialize())
            peer.conn.send_data(sid, msg(b"last"))
            peer.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            peer.flush()

    peer = Peer(script)
    ep = await endpoint_for(peer)
    first = asyncio.create_task(ep.call(b"a", until(b"last", [])))
    second = asyncio.create_task(ep.call(b"b", until(b"last", [])))
    await eventually(lambda: len(opened) == 2)
    release.set()
    await asyncio.wait_for(first, 5)
    with pytest.raises(reader.CallError) as err:
        await asyncio.wait_for(second, 5)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "GOAWAY" in err.value.details
    await eventually(lambda: open_calls(ep) == 0)  # stream 1 ended on its trailers
    assert peer.resets == []
    await ep.call(b"after", until(b"done", []))
    assert peer.connections == 2
    ep.close()
    await peer.stop()


async def test_a_reset_stream_ends_only_its_call() -> None:
    release = asyncio.Event()

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        assert peer.conn is not None
        if request in (b"refused", b"cancelled"):
            peer.conn.send_headers(sid, ok_headers())
            code = 0x7 if request == b"refused" else reader.CANCEL  # REFUSED_STREAM, CANCEL
            peer.conn.reset_stream(sid, code)
            peer.flush()
            return
        await release.wait()
        answer(peer, sid, b"last")

    peer = Peer(script)
    ep = await endpoint_for(peer)
    survivor = asyncio.create_task(ep.call(b"keep", until(b"last", [])))
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"refused", until(b"never", []))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "error 7" in err.value.details
    with pytest.raises(reader.CallError) as err:
        await ep.call(b"cancelled", until(b"never", []))
    assert err.value.code == grpc.StatusCode.CANCELLED
    release.set()
    await asyncio.wait_for(survivor, 5)
    assert peer.connections == 1 and peer.resets == []
    ep.close()
    await peer.stop()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x",  # DATA on stream 0 (RFC 9113 §6.1)
        b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\xff",  # HEADERS with an HPACK index that is not
        b"\x00\x00\x03\x04\x00\x00\x00\x00\x00abc",  # SETTINGS of a length not a multiple of 6
        DataFrame(99, data=b"x").serialize(),  # DATA on a stream never opened
    ],
    ids=["data-on-0", "bad-hpack", "bad-settings", "idle-stream"],
)
async def test_a_protocol_error_fails_every_call_and_the_next_reconnects(garbage: bytes) -> None:
    started: list[int] = []

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        if request == b"later":
            answer(peer, sid, b"fine")
            return
        started.append(sid)
        if len(started) == 2:
            peer.raw(garbage)

    peer = Peer(script)
    ep = await endpoint_for(peer)
    calls = [asyncio.create_task(ep.call(b"x%d" % i, until(b"never", []))) for i in range(2)]
    for call in calls:
        with pytest.raises(reader.CallError) as err:
            await asyncio.wait_for(call, 5)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "protocol error" in err.value.details
    await eventually(lambda: len(peer.goaways) == 1)  # we said why (h2's GOAWAY) and left
    await ep.call(b"later", until(b"fine", []))
    assert peer.connections == 2
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
    await eventually(lambda: peer.pings_acked == 1)
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


async def test_over_a_unix_socket_with_mtls(tmp_path: Path) -> None:
    """The two ways a link reaches Triton besides plain loopback: its unix socket (`:authority`
    localhost, as grpc sends) and mTLS with ALPN h2 (link.ssl_context)."""
    pki = ensure_dev_pki(tmp_path / "pki")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    server_tls.verify_mode = ssl.CERT_REQUIRED
    server_tls.set_alpn_protocols(["h2"])
    client_tls = client_ssl_context(
        pki.ca_cert.read_bytes(), str(pki.client_cert), str(pki.client_key)
    )

    async def script(peer: Peer, sid: int, headers: object, request: bytes) -> None:
        answer(peer, sid, b"over " + request)

    unix_peer, tls_peer = Peer(script), Peer(script)
    path = str(tmp_path / "grpc.sock")
    await unix_peer.start(unix_path=path)
    port = await tls_peer.start(ssl_context=server_tls)
    on_unix = reader.Endpoint(
        "localhost", 0, ssl_context=None, server_hostname=None, metadata=[SECRET], unix_path=path
    )
    on_tls = reader.Endpoint(
        "127.0.0.1", port, ssl_context=client_tls, server_hostname="localhost", metadata=[SECRET]
    )
    await on_unix.call(b"unix", until(b"over unix", []))
    await on_tls.call(b"tls", until(b"over tls", []))
    assert dict(unix_peer.requests[0][0])[b":authority"] == b"localhost"
    tls_headers = dict(tls_peer.requests[0][0])
    assert (
        tls_headers[b":scheme"] == b"https" and tls_headers[b":authority"] == b"localhost:%d" % port
    )
    for ep, peer in ((on_unix, unix_peer), (on_tls, tls_peer)):
        ep.close()
        await peer.stop()
    stranger = reader.Endpoint(
        "127.0.0.1",
        port,
        ssl_context=ssl.create_default_context(),  # does not trust the link's CA
        server_hostname="localhost",
        metadata=(),
    )
    with pytest.raises(reader.CallError) as err:
        await stranger.call(b"x", until(b"never", []))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


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
        answer(peer, sid, b"last")

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
