"""The façade's reader of Triton's `ModelStreamInfer`: gRPC calls on one HTTP/2 connection per
Triton endpoint, the HTTP/2 protocol kept by python-hyper's `h2`, read by one asyncio protocol.

Why this shape (measured with `autoglm bench` when it replaced a grpc.aio call per request):
grpc.aio pays a completion, a poller-thread wake-up and an event-loop turn for every message
it reads, and Triton sends one message per token, so reading alone cost the façade what a bare
consumer spends in total. Here every request is still its own gRPC call — its own HTTP/2 stream, so
cancelling one cancels only that request in Triton — but all calls to an endpoint share one
connection whose bytes arrive in one `data_received`: a socket read brings the responses of
many requests, `h2` turns them into events in one `receive_data`, and each DATA's gRPC messages
go to their call's callback in the same pass — no future, no task switch, no event-loop turn per
token; what h2 has to send back (acks, window updates, resets) goes in one write per pass.

`h2` keeps the protocol (RFC 9113 framing, the stream and connection state machines, flow
control both ways, SETTINGS, PING, CONTINUATION, padding, HPACK through the `hpack` package);
this module adds gRPC's wire format on top (grpc/grpc doc/PROTOCOL-HTTP2.md: request headers,
5-byte length-prefixed messages, status in trailers or a trailers-only response). It replaced a
hand-written framing of the same design: measured with `autoglm bench` at c=64 (6 runs each,
alternating, medians), h2 costs the façade 76 µs of CPU per token unpaced against 64.5 µs
(×1.18) and 218 against 199 µs paced (×1.10): within the 1.25× we accept for a protocol kept by
a maintained, independently tested library rather than by us.
No server push (disabled in our SETTINGS), no compression (never asked for; a compressed
message fails the call).

A call sends its one request message and half-closes (END_STREAM). Once the final response has
arrived the call is complete for its caller, and its stream is left to end on Triton's OK
trailers rather than reset: Triton 2.51 can leak a request it has already completed when the
stream is cancelled right after the final response, and the model version it ran on then never
finishes unloading (20 such streams were enough). A reset is for what is unfinished: our
cancel, the deadline, errors.

Inference and the deep-health one-token probes use this (client.py); readiness checks and
model control stay on grpc.aio (routes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import HeaderTuple, NeverIndexedHeaderTuple

if TYPE_CHECKING:
    from hyperframe.frame import Frame, GoAwayFrame

PATH = b"/inference.GRPCInferenceService/ModelStreamInfer"
CANCEL = h2.errors.ErrorCodes.CANCEL
MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535
_PREFIX = struct.Struct(">BL")  # gRPC message: compressed flag, length
_MAX_MESSAGE = 64 << 20
# Received bytes are acknowledged to h2 (which sends WINDOW_UPDATE once half a window is used)
# per call in lumps of this size and when the call ends, not per DATA frame: our windows are
# the largest allowed, so nothing waits for it, and acknowledging every frame was ~15 % of h2's
# receive cost (a micro-benchmark of 64 streams' one-message frames).
_ACK_EVERY = 1 << 20
# How long a call whose final response has arrived waits for Triton's trailers before it is
# reset.
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
    pending: bytes = b""  # request bytes not yet sent (flow control)
    buffer: bytearray = field(default_factory=bytearray)  # a message split across frames
    headers_seen: bool = False
    unacked: int = 0  # flow-controlled bytes not yet acknowledged to h2 (_ACK_EVERY)
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
        # Every call's headers start with the same fields; the connection's metadata is the
        # link's secret, "never indexed" (RFC 7541 §7.1.3: kept out of every compression table,
        # as a value an attacker must not probe). Per-call fields follow (`start`).
        self._base_headers = [
            HeaderTuple(b":method", b"POST"),
            HeaderTuple(b":scheme", scheme),
            HeaderTuple(b":path", PATH),
            HeaderTuple(b":authority", authority.encode()),
            HeaderTuple(b"content-type", b"application/grpc"),
            HeaderTuple(b"te", b"trailers"),
            *(NeverIndexedHeaderTuple(k.encode(), v.encode()) for k, v in metadata),
        ]
        self._h2 = _H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        # Set before the preface, so these are in force from the first stream on: receive
        # windows as large as allowed (Triton never waits for us), no server push.
        codes = h2.settings.SettingCodes
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                codes.ENABLE_PUSH: 0,
                codes.INITIAL_WINDOW_SIZE: MAX_WINDOW,
                codes.MAX_HEADER_LIST_SIZE: 1 << 16,
            },
        )
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, _Call] = {}
        self._blocked: dict[int, _Call] = {}  # calls with request bytes waiting for window
        self.closed_reason = ""  # set once no new call may start (GOAWAY, error, loss)
        self.settled: asyncio.Future[None] = self._loop.create_future()  # first SETTINGS seen
        self.settled.add_done_callback(_retrieve)  # a failed connect reports it elsewhere
        self._finishing = 0  # calls between their final response and Triton's trailers
        self.quiet = asyncio.Event()  # set while there are none (EngineClient.close waits on it)
        self.quiet.set()
        ev = h2.events
        self._handlers: dict[type, Callable[[h2.events.Event], None]] = {
            ev.DataReceived: self._on_data,  # type: ignore[dict-item]
            ev.ResponseReceived: self._on_headers,  # type: ignore[dict-item]
            ev.TrailersReceived: self._on_headers,  # type: ignore[dict-item]
            ev.StreamEnded: self._on_stream_ended,  # type: ignore[dict-item]
            ev.StreamReset: self._on_reset,  # type: ignore[dict-item]
            ev.ConnectionTerminated: self._on_goaway,  # type: ignore[dict-item]
            ev.RemoteSettingsChanged: self._on_settings,
            ev.WindowUpdated: self._on_window,
        }  # PINGs, SETTINGS acks and the rest: h2 answers them itself, or they need nothing

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(MAX_WINDOW - _DEFAULT_WINDOW)
        self._transport.write(self._h2.data_to_send())

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
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # h2 has queued its GOAWAY
            self._abort(f"HTTP/2 protocol error from Triton: {exc}")
            return
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        self._flush()
        if self.closed_reason and not self._calls:
            self.close()

    # ---- h2's events ------------------------------------------------------------------------

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        call = self._calls.get(sid)
        if call is None:  # a call we ended: its bytes still count for the connection's window
            self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
            return
        call.unacked += event.flow_controlled_length
        if call.unacked > _ACK_EVERY:
            self._h2.acknowledge_received_data(call.unacked, sid)
            call.unacked = 0
        if call.finishing:
            return
        data = event.data
        if call.buffer:
            call.buffer += data
            data = bytes(call.buffer)
            call.buffer.clear()
        pos, n = 0, len(data)
        while n - pos >= 5:
            compressed, size = _PREFIX.unpack_from(data, pos)
            if compressed or size > _MAX_MESSAGE:
                what = "compressed" if compressed else f"oversized ({size} bytes)"
                self._end(call, CallError(grpc.StatusCode.INTERNAL, f"{what} message"), reset=True)
                return
            end = pos + 5 + size
            if end > n:
                break
            try:
                last = call.on_message(data[pos + 5 : end])
            except Exception as exc:  # the handler's verdict on a message (e.g. engine error)
                self._end(call, exc, reset=True)
                return
            pos = end
            if last:
                self._finish(call)
                return
        if pos < n:
            call.buffer += data[pos:]

    def _on_headers(self, event: h2.events.ResponseReceived | h2.events.TrailersReceived) -> None:
        call = self._calls.get(event.stream_id)
        if call is None:
            return
        headers = cast(Sequence[tuple[bytes, bytes]], event.headers)
        if not call.headers_seen:
            call.headers_seen = True
            http = _http_status(headers)
            if http != 200:
                code = _HTTP_CODES.get(http, grpc.StatusCode.UNKNOWN)
                self._end(call, CallError(code, f"HTTP status {http} from Triton"), reset=True)
                return
        status = _status(headers)
        if status is not None:
            code, details = status
            if code == grpc.StatusCode.OK:
                details = "the call ended before its final response"
                code = grpc.StatusCode.UNAVAILABLE
            # A finishing call is settled already: this just forgets it (Triton's OK trailers).
            self._end(call, CallError(code, details), reset=True)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        call = self._calls.get(event.stream_id)
        if call is not None:  # ended without a grpc-status (trailers would have ended it)
            error = CallError(grpc.StatusCode.INTERNAL, "stream ended without a status")
            self._end(call, error, reset=True)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        call = self._calls.get(event.stream_id)
        if call is not None:
            code = int(event.error_code or 0)
            status = grpc.StatusCode.CANCELLED if code == CANCEL else grpc.StatusCode.UNAVAILABLE
            self._end(call, CallError(status, f"Triton reset the stream (HTTP/2 error {code})"))

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        last = event.last_stream_id if event.last_stream_id is not None else 0
        self.closed_reason = f"Triton is closing the connection (GOAWAY, error {event.error_code})"
        for call in [c for s, c in self._calls.items() if s > last]:  # never processed
            self._end(call, CallError(grpc.StatusCode.UNAVAILABLE, self.closed_reason))

    def _on_settings(self, event: h2.events.Event) -> None:
        if not self.settled.done():
            self.settled.set_result(None)
        self._on_window(event)

    def _on_window(self, event: h2.events.Event) -> None:
        for sid, call in list(self._blocked.items()):
            self._send_pending(call)
            if not call.pending:
                del self._blocked[sid]

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
            and len(self._calls) < self._h2.remote_settings.max_concurrent_streams
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
        try:
            sid = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.closed_reason = "stream ids exhausted"
            self.retire()
            raise CallError(grpc.StatusCode.UNAVAILABLE, self.closed_reason) from None
        headers = [*self._base_headers, *(HeaderTuple(k.encode(), v.encode()) for k, v in metadata)]
        if timeout is not None:
            headers.append(HeaderTuple(b"grpc-timeout", grpc_timeout(timeout)))
        try:
            self._h2.send_headers(sid, headers)
        except h2.exceptions.ProtocolError as exc:  # e.g. Triton lowered its stream limit
            raise CallError(grpc.StatusCode.UNAVAILABLE, f"cannot start a call: {exc}") from None
        call = _Call(sid, on_message, self._loop.create_future())
        call.pending = _PREFIX.pack(0, len(request)) + request
        self._calls[sid] = call
        self._send_pending(call)
        if call.pending:
            self._blocked[sid] = call
        if timeout is not None:
            call.timer = self._loop.call_later(timeout, self._expire, call)
        self._flush()
        return call

    def cancel(self, call: _Call) -> None:
        """End `call` from our side (RST_STREAM CANCEL: Triton cancels the request in the
        engine); a no-op for a call that has ended already or is finishing."""
        if self._calls.get(call.sid) is call and not call.finishing:
            self._end(call, _CANCELLED, reset=True)
            self._flush()

    def close(self) -> None:
        self.closed_reason = self.closed_reason or "connection closed by the façade"
        if self._transport is not None and not self._transport.is_closing():
            self._h2.close_connection()  # GOAWAY (NO_ERROR)
            self._flush()
            self._transport.close()

    def retire(self) -> None:
        """No new calls; close once the open ones have ended."""
        self.closed_reason = self.closed_reason or "retired"
        if not self._calls:
            self.close()

    def _expire(self, call: _Call) -> None:
        if self._calls.get(call.sid) is call:
            call.timer = None
            error = CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            self._end(call, error, reset=True)
            self._flush()

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

    def _end(self, call: _Call, error: BaseException | None, *, reset: bool = False) -> None:
        """Forget `call`, settle its future; with `reset`, also reset its stream (our side ends
        it: handler error, cancel, deadline, a finished call's trailers overdue) unless both
        sides have closed it already (RFC 9113 §5.1: no frames on a closed stream)."""
        if self._calls.pop(call.sid, None) is None:
            return
        if call.finishing:
            self._finishing -= 1
            if not self._finishing:
                self.quiet.set()
        self._blocked.pop(call.sid, None)
        if call.timer is not None:
            call.timer.cancel()
        if call.unacked:
            self._h2.acknowledge_received_data(call.unacked, call.sid)
        if reset and self._transport is not None:
            # Not once closed on both sides (RFC 9113 §5.1), nor after our own GOAWAY.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(call.sid, CANCEL)
        self._settle(call, error)
        if self.closed_reason and not self._calls:
            self._loop.call_soon(self.close)  # retired or closing: the last call has ended

    @staticmethod
    def _settle(call: _Call, error: BaseException | None) -> None:
        if not call.done.done():
            if error is _CANCELLED:
                call.done.cancel()  # our side ended it: nobody waits for an error
            elif error is None:
                call.done.set_result(None)
            else:
                call.done.set_exception(error)

    def _send_pending(self, call: _Call) -> None:
        h = self._h2
        while call.pending:
            window = h.local_flow_control_window(call.sid)
            n = min(len(call.pending), window, h.max_outbound_frame_size)
            if n <= 0:
                return
            chunk, call.pending = call.pending[:n], call.pending[n:]
            h.send_data(call.sid, chunk, end_stream=not call.pending)

    def _flush(self) -> None:
        out = self._h2.data_to_send()
        if out and self._transport is not None:
            self._transport.write(out)

    def _abort(self, reason: str) -> None:
        self.closed_reason = reason
        self._flush()  # h2's GOAWAY (PROTOCOL_ERROR or the error's own code)
        if self._transport is not None:
            self._transport.close()  # connection_lost fails the calls with `reason`


class _H2Connection(h2.connection.H2Connection):
    """h2's client connection, kept open after a GOAWAY for the streams it covers.

    RFC 9113 §6.8: streams up to the GOAWAY's last stream id may still complete, and gRPC
    servers drain that way (a GOAWAY, then the open calls' responses). h2 4.3 closes its whole
    state machine on any GOAWAY, so the next frame of such a call would be a protocol error
    (python-hyper/h2 issue #1181, open). This reopens it while streams it covers are open, in
    the same `receive_data` pass (the frames after a GOAWAY often come in the same read).
    No new call starts on the connection (Connection.closed_reason).
    """

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        frames, events = super()._receive_goaway_frame(frame)
        last = frame.last_stream_id
        if any(sid <= last and not s.closed for sid, s in self.streams.items()):
            self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return frames, events


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
