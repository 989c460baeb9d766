"""The lean reader of Triton's `ModelStreamInfer`: gRPC calls on one HTTP/2 connection, framed
here, read by one asyncio protocol.

Why (issue #8; docs/benchmarks.md "Reading Triton's stream in batches"): grpc.aio pays a
completion, a poller-thread wake-up and an event-loop turn for every message it reads, and
Triton sends one message per token, so reading alone cost the façade what a bare consumer
spends in total. Here every request is still its own gRPC call — its own HTTP/2 stream, so
cancelling one cancels only that request in Triton — but all calls to an endpoint share one TLS
connection whose bytes arrive in one `data_received`: a socket read brings the responses of
many requests, split into frames with `struct` and handed to each call's callback in the same
pass — no future, no task switch, no event-loop turn per token.

A call sends its one request message and half-closes (END_STREAM). Once the final response has
arrived the call is complete for its caller, and its stream is left to end on Triton's OK
trailers rather than reset: Triton 2.51 can leak a request it has already completed when the
stream is cancelled right after the final response, and the model version it ran on then never
finishes unloading (20 such streams were enough; engine_client.py's `let_finish` does the same
for the grpc.aio route). A reset is for what is unfinished: our cancel, the deadline, errors.

Scope: the client side of gRPC bidirectional streaming calls over HTTP/2, as gRPC's wire spec
describes it (grpc/grpc doc/PROTOCOL-HTTP2.md: request headers, 5-byte length-prefixed
messages, status in trailers or a trailers-only response) and as much of HTTP/2 (RFC 9113) as a
client needs: the connection preface, SETTINGS (+ACK), PING (+ACK), GOAWAY, RST_STREAM,
WINDOW_UPDATE and flow control in both directions, CONTINUATION, padding, frame-size limits.
Responses' HPACK is decoded by the `hpack` package (the one python-hyper's h2 uses); requests'
header fields go as literals that never enter the dynamic table (hpack_literals.py).
No server push (disabled in our SETTINGS), no compression (we never ask for it; a compressed
message fails the call).

Inference and the deep-health one-token probes use this (engine_client.py); readiness checks
and model control stay on grpc.aio.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import grpc
import hpack

from autoglm.server.engine.hpack_literals import hpack_literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PATH = b"/inference.GRPCInferenceService/ModelStreamInfer"

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Settings (§6.5.2) and error codes (§7).
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6
NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x7, 0x8

_HEADER = struct.Struct(">HBBBL")  # length (16 high bits + 8 low bits), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_PREFIX = struct.Struct(">BL")  # gRPC message: compressed flag, length
MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535
_DEFAULT_FRAME = 16_384
_MAX_MESSAGE = 64 << 20
_LAST_STREAM_ID = 2**31 - 1
# Our receive windows are the largest allowed, so Triton never waits for us; we top them up
# once half is used (on a connection: after ~1 GiB of responses).
_TOP_UP = MAX_WINDOW // 2
# How long a call whose final response has arrived waits for Triton's trailers before it is
# reset (engine_client.let_finish uses the same for the grpc.aio route).
FINISH_GRACE_S = 30.0

_CODES = {c.value[0]: c for c in grpc.StatusCode}
# HTTP status → gRPC code for responses without grpc-status (grpc doc/http-grpc-status-mapping.md)
_HTTP_CODES = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


class CallError(Exception):
    """A call ended without its final response: a gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 8, n & 0xFF, ftype, flags, sid) + payload


def grpc_timeout(seconds: float) -> bytes:
    """The `grpc-timeout` header value: at most 8 digits and a unit (PROTOCOL-HTTP2.md)."""
    ms = max(1, int(seconds * 1000))
    if ms < 10**8:
        return b"%dm" % ms
    return b"%dS" % min(10**8 - 1, ms // 1000)


def _status(headers: Sequence[tuple[bytes, bytes]]) -> tuple[grpc.StatusCode, str] | None:
    """The gRPC status in a header block, if it has one."""
    code: grpc.StatusCode | None = None
    details = ""
    for name, value in headers:
        if name == b"grpc-status":
            code = _CODES.get(int(value), grpc.StatusCode.UNKNOWN) if value.isdigit() else None
            if code is None:
                return grpc.StatusCode.INTERNAL, f"malformed grpc-status {value!r}"
        elif name == b"grpc-message":
            details = urllib.parse.unquote(value.decode("utf-8", "replace"))
    return None if code is None else (code, details)


def _http_status(headers: Sequence[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() else 0
    return 0


# on_message(payload) -> True when that message was the call's last (the final response).
OnMessage = Callable[[bytes], bool]


@dataclass(slots=True, eq=False)
class _Call:
    sid: int
    on_message: OnMessage
    done: asyncio.Future[None]
    send_window: int
    pending: bytes = b""  # request bytes not yet sent (flow control)
    buffer: bytearray = field(default_factory=bytearray)  # a message split across frames
    headers_seen: bool = False
    received: int = 0  # flow-controlled bytes since our last WINDOW_UPDATE for this stream
    timer: asyncio.TimerHandle | None = None
    finishing: bool = False  # final response handed over; waiting for Triton's trailers


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to one Triton endpoint, carrying many ModelStreamInfer calls."""

    def __init__(
        self,
        authority: str,
        scheme: bytes,
        metadata: Sequence[tuple[str, str]],
        *,
        finish_grace_s: float = FINISH_GRACE_S,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._finish_grace_s = finish_grace_s  # a finished call's wait for trailers, then reset
        # Every call's header block starts with the same fields; the connection's metadata is
        # the link's secret (never indexed). Per-call fields follow (`start`).
        self._base_block = b"".join(
            [
                hpack_literal(b":method", b"POST"),
                hpack_literal(b":scheme", scheme),
                hpack_literal(b":path", PATH),
                hpack_literal(b":authority", authority.encode()),
                hpack_literal(b"content-type", b"application/grpc"),
                hpack_literal(b"te", b"trailers"),
                *(hpack_literal(k.encode(), v.encode(), never_indexed=True) for k, v in metadata),
            ]
        )
        self._decoder = hpack.Decoder()
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, _Call] = {}
        self._blocked: dict[int, _Call] = {}  # calls with request bytes waiting for window
        self._buf = b""  # an incomplete frame
        self._block: tuple[int, int, bytearray] | None = None  # (sid, flags, header block)
        self._next_sid = 1
        self._send_window = _DEFAULT_WINDOW
        self._peer_initial_window = _DEFAULT_WINDOW
        self._peer_max_frame = _DEFAULT_FRAME
        self._peer_max_streams = MAX_WINDOW
        self._received = 0  # flow-controlled bytes since our last connection WINDOW_UPDATE
        self.closed_reason = ""  # set once no new call may start (GOAWAY, error, loss)
        self.settled: asyncio.Future[None] = self._loop.create_future()  # first SETTINGS seen
        self.settled.add_done_callback(_retrieve)  # a failed connect reports it elsewhere
        self._finishing = 0  # calls between their final response and Triton's trailers
        self.quiet = asyncio.Event()  # set while there are none (EngineClient.close waits on it)
        self.quiet.set()

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        settings = b"".join(
            _SETTING.pack(k, v)
            for k, v in (
                (S_ENABLE_PUSH, 0),
                (S_INITIAL_WINDOW_SIZE, MAX_WINDOW),
                (S_MAX_HEADER_LIST_SIZE, 1 << 16),
            )
        )
        self._transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(MAX_WINDOW - _DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        reason = self.closed_reason or f"connection to Triton lost: {exc or 'closed by peer'}"
        self.closed_reason = reason
        if not self.settled.done():
            self.settled.set_exception(CallError(grpc.StatusCode.UNAVAILABLE, reason))
        calls, self._calls = self._calls, {}
        self._blocked.clear()
        self._finishing = 0
        self.quiet.set()
        for call in calls.values():
            self._settle(call, CallError(grpc.StatusCode.UNAVAILABLE, reason))

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out: list[bytes] = []
        pos, n = 0, len(data)
        try:
            while n - pos >= 9:
                hi, lo, ftype, flags, sid = _HEADER.unpack_from(data, pos)
                end = pos + 9 + (hi << 8 | lo)
                if end > n:
                    break
                payload = data[pos + 9 : end]
                pos = end
                if self._block is not None and ftype != CONTINUATION:
                    raise _ProtocolError("a header block was interrupted by another frame")
                if ftype == DATA:
                    self._on_data(sid & _LAST_STREAM_ID, flags, payload, out)
                else:
                    self._on_control(ftype, flags, sid & _LAST_STREAM_ID, payload, out)
        except _ProtocolError as exc:
            self._abort(f"HTTP/2 protocol error from Triton: {exc}", out)
            return
        if pos < n:
            self._buf = data[pos:]
        if self._received > _TOP_UP:
            out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._received)))
            self._received = 0
        if out and self._transport is not None:
            self._transport.write(b"".join(out))
        if self.closed_reason and not self._calls:
            self.close()

    # ---- frames -----------------------------------------------------------------------------

    def _on_data(self, sid: int, flags: int, payload: bytes, out: list[bytes]) -> None:
        self._received += len(payload)
        call = self._calls.get(sid)
        if call is None:
            return  # a call we ended; its bytes still count for the connection's window
        call.received += len(payload)
        if call.received > _TOP_UP:
            out.append(frame(WINDOW_UPDATE, 0, sid, _U32.pack(call.received)))
            call.received = 0
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ProtocolError("bad padding")
            payload = payload[1 : len(payload) - payload[0]]
        if not call.finishing:
            self._messages(call, payload, out)
        if flags & END_STREAM and sid in self._calls:
            error = CallError(grpc.StatusCode.INTERNAL, "stream ended without a status")
            self._end(call, error, self._reset_unless_closed(call, out))

    def _messages(self, call: _Call, data: bytes, out: list[bytes]) -> None:
        """Hand every complete gRPC message of `data` (plus what was buffered) to the call."""
        if call.buffer:
            call.buffer += data
            data = bytes(call.buffer)
            call.buffer.clear()
        pos, n = 0, len(data)
        while n - pos >= 5:
            compressed, size = _PREFIX.unpack_from(data, pos)
            if compressed or size > _MAX_MESSAGE:
                what = "compressed" if compressed else f"oversized ({size} bytes)"
                self._end(call, CallError(grpc.StatusCode.INTERNAL, f"{what} message"), out)
                return
            end = pos + 5 + size
            if end > n:
                break
            try:
                last = call.on_message(data[pos + 5 : end])
            except Exception as exc:  # the handler's verdict on a message (e.g. engine error)
                self._end(call, exc, out)
                return
            pos = end
            if last:
                self._finish(call)
                return
        if pos < n:
            call.buffer += data[pos:]

    def _on_control(
        self, ftype: int, flags: int, sid: int, payload: bytes, out: list[bytes]
    ) -> None:
        if ftype == HEADERS:
            if flags & PADDED:
                if not payload or payload[0] >= len(payload):
                    raise _ProtocolError("bad padding")
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._block = (sid, flags, bytearray(payload))
            if flags & END_HEADERS:
                self._on_header_block(out)
        elif ftype == CONTINUATION:
            if self._block is None or self._block[0] != sid:
                raise _ProtocolError("CONTINUATION without its HEADERS")
            self._block[2].extend(payload)
            if flags & END_HEADERS:
                self._on_header_block(out)
        elif ftype == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload)
                out.append(frame(SETTINGS, ACK, 0))
                self._flush_blocked(out)
                if not self.settled.done():
                    self.settled.set_result(None)
        elif ftype == WINDOW_UPDATE:
            if len(payload) != 4:
                raise _ProtocolError("WINDOW_UPDATE of the wrong size")
            inc = _U32.unpack(payload)[0] & _LAST_STREAM_ID
            if sid == 0:
                self._send_window += inc
            elif (call := self._calls.get(sid)) is not None:
                call.send_window += inc
            self._flush_blocked(out)
        elif ftype == PING:
            if not flags & ACK:
                out.append(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            if (call := self._calls.get(sid)) is not None:
                code = _U32.unpack(payload)[0] if len(payload) == 4 else -1
                status = grpc.StatusCode.UNAVAILABLE
                if code == CANCEL:
                    status = grpc.StatusCode.CANCELLED
                self._end(call, CallError(status, f"Triton reset the stream (HTTP/2 error {code})"))
        elif ftype == GOAWAY:
            last, code = struct.unpack_from(">LL", payload) if len(payload) >= 8 else (0, -1)
            last &= _LAST_STREAM_ID
            self.closed_reason = f"Triton is closing the connection (GOAWAY, error {code})"
            for call in [c for s, c in self._calls.items() if s > last]:  # never processed
                self._end(call, CallError(grpc.StatusCode.UNAVAILABLE, self.closed_reason))
        elif ftype == PUSH_PROMISE:
            raise _ProtocolError("PUSH_PROMISE although push is disabled")
        # PRIORITY and unknown types are ignored (§5.5).

    def _on_header_block(self, out: list[bytes]) -> None:
        assert self._block is not None
        sid, flags, block = self._block
        self._block = None
        try:  # always decoded: HPACK's table is the connection's, whoever the stream is
            headers = self._decoder.decode(bytes(block), raw=True)
        except hpack.HPACKError as exc:
            raise _ProtocolError(f"HPACK: {exc}") from None
        call = self._calls.get(sid)
        if call is None:
            return
        if not call.headers_seen:
            call.headers_seen = True
            http = _http_status(headers)
            if http != 200:
                code = _HTTP_CODES.get(http, grpc.StatusCode.UNKNOWN)
                self._end(call, CallError(code, f"HTTP status {http} from Triton"), out)
                return
        status = _status(headers)
        if status is not None:
            code, details = status
            if code == grpc.StatusCode.OK:
                details = "the call ended before its final response"
                code = grpc.StatusCode.UNAVAILABLE
            rst = self._reset_unless_closed(call, out) if flags & END_STREAM else out
            self._end(call, CallError(code, details), rst)  # a finishing call: already settled
        elif flags & END_STREAM:
            error = CallError(grpc.StatusCode.INTERNAL, "stream ended without a status")
            self._end(call, error, self._reset_unless_closed(call, out))

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ProtocolError("SETTINGS of the wrong size")
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            # S_HEADER_TABLE_SIZE bounds our encoder's dynamic table, which we never use
            # (hpack_literal), so it needs no action.
            if key == S_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ProtocolError("INITIAL_WINDOW_SIZE too large")
                delta, self._peer_initial_window = value - self._peer_initial_window, value
                for call in self._calls.values():
                    call.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not _DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise _ProtocolError("MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value

    # ---- calls ------------------------------------------------------------------------------

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    @property
    def finishing_calls(self) -> int:
        """Calls whose final response has arrived and whose stream waits for Triton's trailers."""
        return self._finishing

    def can_start(self) -> bool:
        return (
            self._transport is not None
            and not self.closed_reason
            and self._next_sid <= _LAST_STREAM_ID
            and len(self._calls) < self._peer_max_streams
        )

    def start(
        self,
        request: bytes,
        on_message: OnMessage,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> _Call:
        """Open a call, send `request` (its one message) and half-close.

        `on_message(payload)` gets every response message as it arrives and returns True for
        the last one; an exception it raises ends the call with that exception. `call.done`
        resolves at the end, or fails with CallError (Triton's status, a reset, the connection
        lost, the deadline) or the handler's exception. `cancel(call)` ends it from our side
        unless its final response has arrived (the stream then ends on Triton's trailers).
        """
        if not self.can_start():
            reason = self.closed_reason or "connection at its stream limit"
            raise CallError(grpc.StatusCode.UNAVAILABLE, reason)
        assert self._transport is not None
        sid, self._next_sid = self._next_sid, self._next_sid + 2
        if self._next_sid > _LAST_STREAM_ID:
            self.closed_reason = "stream ids exhausted"
        block = self._base_block + b"".join(
            hpack_literal(k.encode(), v.encode()) for k, v in metadata
        )
        if timeout is not None:
            block += hpack_literal(b"grpc-timeout", grpc_timeout(timeout))
        size = self._peer_max_frame
        out = [frame(HEADERS, END_HEADERS if len(block) <= size else 0, sid, block[:size])]
        for i in range(size, len(block), size):
            last = i + size >= len(block)
            out.append(frame(CONTINUATION, END_HEADERS if last else 0, sid, block[i : i + size]))
        call = _Call(sid, on_message, self._loop.create_future(), self._peer_initial_window)
        call.pending = _PREFIX.pack(0, len(request)) + request
        self._calls[sid] = call
        self._send_pending(call, out)
        if call.pending:
            self._blocked[sid] = call
        if timeout is not None:
            call.timer = self._loop.call_later(timeout, self._expire, call)
        self._transport.write(b"".join(out))
        return call

    def cancel(self, call: _Call) -> None:
        """End `call` from our side (RST_STREAM CANCEL: Triton cancels the request in the
        engine); a no-op for a call that has ended already or is finishing."""
        if self._calls.get(call.sid) is call and not call.finishing:
            out: list[bytes] = []
            self._end(call, _CANCELLED, out)
            if self._transport is not None:
                self._transport.write(b"".join(out))

    def close(self) -> None:
        self.closed_reason = self.closed_reason or "connection closed by the façade"
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame(GOAWAY, 0, 0, struct.pack(">LL", 0, NO_ERROR)))
            self._transport.close()

    def _expire(self, call: _Call) -> None:
        if self._calls.get(call.sid) is call:
            call.timer = None
            out: list[bytes] = []
            error = CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            self._end(call, error, out)
            if self._transport is not None:
                self._transport.write(b"".join(out))

    def _finish(self, call: _Call) -> None:
        """The final response has been handed over: the call is done for its caller; its stream
        stays until Triton's trailers end it (or is reset after the grace period)."""
        call.finishing = True
        self._finishing += 1
        self.quiet.clear()
        if call.timer is not None:
            call.timer.cancel()
        call.timer = self._loop.call_later(self._finish_grace_s, self._expire, call)
        self._settle(call, None)

    @staticmethod
    def _reset_unless_closed(call: _Call, out: list[bytes]) -> list[bytes] | None:
        """Where to put a RST_STREAM for a stream the peer has just ended: nowhere once our side
        is closed too (the whole request sent, END_STREAM with it), as RFC 9113 §5.1 forbids
        frames on a closed stream."""
        return out if call.pending else None

    def _end(
        self, call: _Call, error: BaseException | None, out: list[bytes] | None = None
    ) -> None:
        """Forget `call`, settle its future; with `out`, also reset the stream (our side ends
        it: handler error, cancel, deadline, a finished call's trailers overdue)."""
        if self._calls.pop(call.sid, None) is None:
            return
        if call.finishing:
            self._finishing -= 1
            if not self._finishing:
                self.quiet.set()
        self._blocked.pop(call.sid, None)
        if call.timer is not None:
            call.timer.cancel()
        if out is not None:
            out.append(frame(RST_STREAM, 0, call.sid, _U32.pack(CANCEL)))
        self._settle(call, error)
        if self.closed_reason and not self._calls:
            self._loop.call_soon(self.close)  # retired or closing: the last call has ended

    def retire(self) -> None:
        """No new calls; close once the open ones have ended."""
        self.closed_reason = self.closed_reason or "retired"
        if not self._calls:
            self.close()

    @staticmethod
    def _settle(call: _Call, error: BaseException | None) -> None:
        if not call.done.done():
            if error is _CANCELLED:
                call.done.cancel()  # our side ended it: nobody waits for an error
            elif error is None:
                call.done.set_result(None)
            else:
                call.done.set_exception(error)

    def _send_pending(self, call: _Call, out: list[bytes]) -> None:
        while call.pending:
            n = min(len(call.pending), self._peer_max_frame, self._send_window, call.send_window)
            if n <= 0:
                return
            chunk, call.pending = call.pending[:n], call.pending[n:]
            self._send_window -= n
            call.send_window -= n
            out.append(frame(DATA, 0 if call.pending else END_STREAM, call.sid, chunk))

    def _flush_blocked(self, out: list[bytes]) -> None:
        for sid, call in list(self._blocked.items()):
            self._send_pending(call, out)
            if not call.pending:
                del self._blocked[sid]

    def _abort(self, reason: str, out: list[bytes]) -> None:
        self.closed_reason = reason
        if self._transport is not None:
            out.append(frame(GOAWAY, 0, 0, struct.pack(">LL", 0, PROTOCOL_ERROR)))
            self._transport.write(b"".join(out))
            self._transport.close()


class _ProtocolError(Exception):
    pass


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


_CANCELLED = CallError(grpc.StatusCode.CANCELLED, "cancelled by the façade")


class Endpoint:
    """Connections to one Triton endpoint: new calls go on the first that can take them; a new
    connection is opened when none can (lost, closing, or at Triton's stream limit)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        metadata: Sequence[tuple[str, str]],
        connect_timeout_s: float = 5.0,
        finish_grace_s: float = FINISH_GRACE_S,
        unix_path: str | None = None,
    ) -> None:
        """`unix_path`: connect to that unix socket instead of host:port (which then only names
        the endpoint in errors and the `:authority` header)."""
        self.host, self.port = host, port
        self._unix_path = unix_path
        self._finish_grace_s = finish_grace_s
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._metadata = tuple(metadata)
        self._connect_timeout_s = connect_timeout_s
        self._connections: list[Connection] = []
        self._connecting: asyncio.Task[Connection] | None = None

    async def call(
        self,
        request: bytes,
        on_message: OnMessage,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> None:
        """One call: returns after the message `on_message` called the last; raises CallError
        or the handler's exception. Cancelling the awaiting task cancels the call in Triton."""
        conn = await self._connection()
        call = conn.start(request, on_message, metadata, timeout)
        try:
            await call.done
        finally:
            conn.cancel(call)

    async def _connection(self) -> Connection:
        for conn in self._connections:
            if conn.can_start():
                return conn
        self._connections = [c for c in self._connections if not c.closed_reason]
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        scheme = b"https" if self._ssl is not None else b"http"
        authority = (
            "localhost"  # what grpc sends for a unix: target
            if self._unix_path is not None
            else f"{self._server_hostname or self.host}:{self.port}"
        )

        def factory() -> Connection:
            return Connection(
                authority, scheme, self._metadata, finish_grace_s=self._finish_grace_s
            )

        tls = {
            "ssl": self._ssl,
            "server_hostname": self._server_hostname if self._ssl is not None else None,
        }
        where = self._unix_path or f"{self.host}:{self.port}"
        try:
            if self._unix_path is not None:
                opening = loop.create_unix_connection(factory, self._unix_path, **tls)
            else:
                opening = loop.create_connection(factory, self.host, self.port, **tls)
            transport, conn = await asyncio.wait_for(opening, self._connect_timeout_s)
            await asyncio.wait_for(conn.settled, self._connect_timeout_s)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                detect_dead_peer(sock)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            detail = str(exc) or type(exc).__name__
            raise CallError(
                grpc.StatusCode.UNAVAILABLE, f"cannot connect to {where}: {detail}"
            ) from None
        self._connections.append(conn)
        return conn

    def retire(self) -> None:
        """No new calls; each connection closes once its calls have ended."""
        for conn in self._connections:
            conn.retire()
        self._connections.clear()

    @property
    def finishing_calls(self) -> int:
        """Calls on this endpoint waiting for Triton's trailers after their final response:
        closing now would reset them (EngineClient.close waits for them first)."""
        return sum(conn.finishing_calls for conn in self._connections)

    async def finished(self) -> None:
        """Until no call on this endpoint is waiting for its trailers."""
        await asyncio.gather(*(conn.quiet.wait() for conn in tuple(self._connections)))

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()


# A Triton host that vanishes (power, network partition) sends no RST: without these, calls on
# its connection — and every new call the endpoint puts there — would wait for the kernel's
# retransmission give-up (~15 min) or their deadline. Kernel TCP keepalive probes a connection
# silent for 30 s (every 10 s, 3 times), and TCP_USER_TIMEOUT drops one whose sent data has gone
# unacknowledged for 60 s; either way the calls fail UNAVAILABLE and the next call reconnects.
# Kernel-level, so unlike HTTP/2 PINGs they never count against the gRPC server's ping policy
# (grpc's GOAWAY "too_many_pings" for pings more often than every 5 min on a silent connection).
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 30, 10, 3
USER_TIMEOUT_MS = 60_000


def detect_dead_peer(sock: socket.socket) -> None:
    """TCP keepalive and TCP_USER_TIMEOUT on a connection to Triton (Linux; elsewhere what the
    platform has)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
