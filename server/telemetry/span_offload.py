"""A span processor that exports from a child process: OTLP encoding off the façade's GIL.

Why (issue #8; measured with `autoglm bench`): OpenTelemetry's `BatchSpanProcessor` encodes
spans into OTLP protobuf in pure Python on its worker thread, ~21 µs a span (~11 ms for a batch
of 512 here). That thread holds the GIL in slices while the façade's event loop waits for it,
and every token in flight waits with the loop: with export on, paced 64-stream runs added
+5…+12 ms to the p99 inter-token latency; with the same spans made but never exported, +1.9…
+2.1 ms.

How: `on_end` flattens each sampled span into plain values (span_wire.py, a few µs, on the
thread that ended it) and queues them. A writer thread sends what is queued every
`send_interval_s`, or as soon as `frame_spans` wait, to the child process
(span_export_child.py) as `marshal` frames on its stdin; the child rebuilds the spans and
exports them through a `BatchSpanProcessor` with the same exporter. `force_flush` waits for the
child's answer that it has exported everything sent before it. At most `max_queue` spans wait
here (OTEL_BSP_MAX_QUEUE_SIZE, as the SDK's processor); more are dropped and counted, never
blocking the caller. A child that dies is started again (at most once per `restart_after_s`).
The child's CPU is the façade's: the bench counts the façade's descendants with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from autoglm.server.telemetry.span_wire import WIRE_VERSION, Flat, FrameReader, flatten, frame

__all__ = ["OffloadSpanProcessor"]

log = logging.getLogger("autoglm.server.span_export")

_DEFAULT_MAX_QUEUE = 2048  # OTEL_BSP_MAX_QUEUE_SIZE's default (OpenTelemetry SDK spec)
_CHILD_EXIT_TIMEOUT_S = 30.0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not an integer") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: must be positive")
    return value


class _Child:
    """One exporter process and the thread that reads its acknowledgements."""

    def __init__(self, command: list[str], init: bytes, on_ack: Callable[..., None]) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.stdin: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        self.stdin.write(init)
        self.stdin.flush()
        self.alive = True
        self._reader = threading.Thread(
            target=self._read_acks, args=(on_ack,), name="span-export-acks", daemon=True
        )
        self._reader.start()

    def _read_acks(self, on_ack: Callable[..., None]) -> None:
        reader = FrameReader(self.proc.stdout)  # type: ignore[arg-type]
        try:
            while (message := reader.read()) is not None:
                _, n, ok = message
                on_ack(self, n, ok)
        except (EOFError, ValueError, OSError) as exc:
            log.error("span exporter process: unreadable answer: %r", exc)
        on_ack(self, None, False)  # the child is gone

    def send(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def close(self, timeout_s: float) -> int | None:
        """End of input (the child exports what is left and exits); its exit code."""
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.error("span exporter process did not exit within %.0f s; killed", timeout_s)
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        return code


class OffloadSpanProcessor(SpanProcessor):
    def __init__(
        self,
        settings_fields: dict[str, Any],
        resource: Resource,
        *,
        log_setup: tuple[str, str] | None = None,
        max_queue: int | None = None,
        frame_spans: int = 256,
        send_interval_s: float = 0.2,
        restart_after_s: float = 5.0,
        command: list[str] | None = None,
    ) -> None:
        self._init = frame(
            (
                "init",
                WIRE_VERSION,
                settings_fields,
                dict(resource.attributes),
                resource.schema_url,
                log_setup,
            )
        )
        self._command = command or [
            sys.executable,
            "-m",
            "autoglm.server.telemetry.span_export_child",
        ]
        self._max_queue = max_queue or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", _DEFAULT_MAX_QUEUE)
        self._frame_spans = frame_spans
        self._interval_s = send_interval_s
        self._restart_after_s = restart_after_s
        self._cond = threading.Condition()
        self._queue: list[Flat] = []
        self.dropped = 0  # spans dropped: queue full, or lost with a child that died
        self._warned_full = False
        self._flush_asked = 0  # flush requests are numbered 1, 2, …
        self._flush_sent = 0
        self._flush_done = 0  # every flush up to this one has its answer
        self._flush_ok: dict[int, bool] = {}
        self._stopping = False
        self._child_died_at = float("-inf")
        self._child: _Child | None = None
        child = self._start_child()
        with self._cond:
            self._child = child
        self._writer = threading.Thread(target=self._write_loop, name="span-export", daemon=True)
        self._writer.start()

    # --- SpanProcessor --------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:  # type: ignore[union-attr]
            return
        flat = flatten(span)
        with self._cond:
            if self._stopping:
                return
            if len(self._queue) >= self._max_queue:
                self.dropped += 1
                if not self._warned_full:
                    self._warned_full = True
                    log.warning(
                        "span export queue full (%d spans): dropping spans until it drains",
                        self._max_queue,
                    )
                return
            self._queue.append(flat)
            if len(self._queue) == self._frame_spans:
                self._cond.notify_all()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """True once the child has exported every span ended before this call."""
        with self._cond:
            if self._stopping and not self._writer.is_alive():
                return False
            self._flush_asked += 1
            n = self._flush_asked
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._flush_done >= n, timeout_millis / 1000)
            return bool(done and self._flush_ok.pop(n, False))

    def shutdown(self) -> None:
        """Send what is queued, let the child export it and exit."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._writer.join(_CHILD_EXIT_TIMEOUT_S + 5)
        child = self._child
        if self._writer.is_alive() and child is not None:
            # Stuck writing to a child that stopped reading (its exporter hung): end it.
            log.error("span exporter process stopped reading; killed")
            child.proc.kill()
            self._writer.join(5)

    # --- the writer thread ----------------------------------------------------------------

    def _start_child(self) -> _Child | None:
        """A new child, or None (it failed to start, or the last one died too recently)."""
        if time.monotonic() - self._child_died_at < self._restart_after_s:
            return None
        try:
            return _Child(self._command, self._init, self._on_ack)
        except OSError as exc:
            log.error("span exporter process could not start: %r", exc)
            self._child_died_at = time.monotonic()
            return None

    def _on_ack(self, child: _Child, n: int | None, ok: bool) -> None:
        with self._cond:
            if n is None:  # the child's stdout ended: it exited
                child.alive = False
                if child is self._child and not self._stopping:
                    self._lost(child)
            else:
                self._flush_ok[n] = ok
                self._flush_done = max(self._flush_done, n)
            self._cond.notify_all()

    def _lost(self, child: _Child) -> None:
        """The child died: flushes it was sent fail; the next send starts another (caller holds
        the lock)."""
        code = child.proc.poll()
        log.error("span exporter process exited (code %s); starting another", code)
        for n in range(self._flush_done + 1, self._flush_sent + 1):
            self._flush_ok[n] = False
        self._flush_done = max(self._flush_done, self._flush_sent)
        self._child = None
        self._child_died_at = time.monotonic()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._stopping
                        or self._flush_asked > self._flush_sent
                        or len(self._queue) >= self._frame_spans
                    ),
                    self._interval_s,
                )
                batch, self._queue = self._queue, []
                flush = self._flush_asked if self._flush_asked > self._flush_sent else 0
                stopping = self._stopping
                if len(batch) < self._max_queue:
                    self._warned_full = False
            self._send(batch, flush)
            if stopping:
                break
        child = self._child
        if child is not None:
            code = child.close(_CHILD_EXIT_TIMEOUT_S)
            if code:
                log.error("span exporter process exited with code %s at shutdown", code)
        with self._cond:
            self._flush_done = max(self._flush_done, self._flush_asked)  # no answer will come
            self._cond.notify_all()

    def _send(self, batch: list[Flat], flush: int) -> None:
        if not batch and not flush:
            return
        child = self._child
        if child is None or not child.alive:
            child = self._start_child()  # outside the lock: on_end never waits for a fork
            with self._cond:
                self._child = child
        data = [
            frame(("spans", batch[i : i + self._frame_spans]))
            for i in range(0, len(batch), self._frame_spans)
        ]
        if flush:
            data.append(frame(("flush", flush)))
            with self._cond:  # before sending: a child dying now fails this flush (_lost)
                self._flush_sent = flush
        try:
            if child is None:
                raise BrokenPipeError("no span exporter process")
            child.send(b"".join(data))
        except (BrokenPipeError, OSError, ValueError) as exc:
            with self._cond:
                self.dropped += len(batch)
                if child is not None and child is self._child:
                    child.alive = False
                    self._lost(child)
                else:
                    for n in range(self._flush_done + 1, flush + 1):
                        self._flush_ok[n] = False
                    self._flush_done = max(self._flush_done, flush)
                self._cond.notify_all()
            if child is not None:  # else the child's death or failed start was logged
                log.error("span export: %d spans lost (%r)", len(batch), exc)
