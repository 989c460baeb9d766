"""Fuzzing reader.py's side of the connection: whatever bytes a peer sends — malformed or
truncated frames, GOAWAY, RST_STREAM, WINDOW_UPDATE and SETTINGS with any values — every call
ends with a CallError or keeps going as HTTP/2 allows; the reader never hangs a call and never
raises anything else (hypothesis).

The peer is python-hyper's h2 (server side) on a real socket pair, which opens the calls
properly; the fuzzed bytes then go past it, straight onto the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import h2.config
import h2.connection
import h2.events
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from autoglm.server.engine import reader

SIDS = (0, 1, 3, 5, 7, 9, 2**31 - 1)  # the connection, the three calls, idle streams


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        struct.pack(">HBBBL", len(payload) >> 8, len(payload) & 0xFF, ftype, flags, sid) + payload
    )


u32 = st.integers(0, 2**32 - 1)
any_frame = st.builds(
    _frame, st.integers(0, 12), st.integers(0, 255), st.sampled_from(SIDS), st.binary(max_size=40)
)
goaway = st.builds(
    lambda sid, last, code, debug: _frame(7, 0, sid, struct.pack(">LL", last, code) + debug),
    st.sampled_from((0, 0, 0, 1)),
    st.sampled_from((0, 1, 3, 5, 2**31 - 1)) | u32,
    st.integers(0, 14) | u32,
    st.binary(max_size=8),
)
rst_stream = st.builds(
    lambda sid, code, extra: _frame(3, 0, sid, struct.pack(">L", code) + extra),
    st.sampled_from(SIDS),
    st.integers(0, 14) | u32,
    st.sampled_from((b"", b"", b"x")),
)
window_update = st.builds(
    lambda sid, inc: _frame(8, 0, sid, struct.pack(">L", inc)),
    st.sampled_from(SIDS),
    st.sampled_from((0, 1, 2**31 - 1, 2**31, 2**32 - 1)) | u32,
)
settings_frame = st.builds(
    lambda flags, pairs: _frame(4, flags, 0, b"".join(struct.pack(">HL", k, v) for k, v in pairs)),
    st.sampled_from((0, 0, 1)),
    st.lists(st.tuples(st.integers(0, 8), u32), max_size=4),
)
data_frame = st.builds(  # gRPC messages: whole, split, compressed, oversized, padded
    lambda sid, flags, compressed, size, body: _frame(
        0, flags, sid, struct.pack(">BL", compressed, size) + body
    ),
    st.sampled_from((1, 3, 5)),
    st.sampled_from((0, 1, 8, 9)),
    st.sampled_from((0, 0, 1)),
    st.integers(0, 12) | u32,
    st.binary(max_size=12),
)
frames = st.lists(
    st.one_of(any_frame, goaway, rst_stream, window_update, settings_frame, data_frame),
    min_size=1,
    max_size=6,
)


async def _scenario(frames: list[bytes], cut: int | None) -> None:
    loop = asyncio.get_running_loop()
    unexpected: list[object] = []
    loop.set_exception_handler(lambda _, ctx: unexpected.append(ctx))
    ours, theirs = socket.socketpair()
    _, conn = await loop.create_connection(
        lambda: reader.Connection("localhost", b"http", [("secret", "s")], finish_grace_s=0.2),
        sock=ours,
    )
    peer_r, peer_w = await asyncio.open_connection(sock=theirs)
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    peer.initiate_connection()
    peer_w.write(peer.data_to_send())
    await asyncio.wait_for(conn.settled, 5)
    calls = [conn.start(b"req", lambda payload: False, timeout=5) for _ in range(3)]
    opened: set[int] = set()
    async with asyncio.timeout(5):  # the peer sees the three calls, then answers their headers
        while len(opened) < 3:
            for ev in peer.receive_data(await peer_r.read(65536)):
                if isinstance(ev, h2.events.RequestReceived):
                    opened.add(ev.stream_id)
    for sid in sorted(opened):
        peer.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    blob = b"".join(frames)
    peer_w.write(peer.data_to_send() + (blob if cut is None else blob[:cut]))
    await peer_w.drain()
    peer_w.close()  # then the peer goes away: nothing may be left waiting
    for call in calls:
        with contextlib.suppress(reader.CallError):
            await asyncio.wait_for(asyncio.shield(call.done), 5)
        error = call.done.exception()
        assert isinstance(error, reader.CallError)
        event(f"{error.code.name}: {error.details.split(':')[0][:40]}")  # what ended the calls
    assert all(call.done.done() for call in calls)
    assert conn.open_calls == 0
    assert not unexpected, unexpected
    conn.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(frames=frames, cut=st.none() | st.integers(0, 200))
def test_no_bytes_from_the_peer_hang_a_call_or_raise(frames: list[bytes], cut: int | None) -> None:
    asyncio.run(_scenario(frames, cut))
