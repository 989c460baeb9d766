"""The audit chain's head, written now and then to a sink the façade cannot rewrite.

A hash chain proves that no record was edited, but not that the newest records were not cut
off: a truncated chain is still a valid chain. Writing the head (seq and hash) to a place the
façade's host cannot take back closes that gap: `autoglm audit verify --anchor FILE` fails when
the chain ends before a seq the anchor recorded, or when an anchored seq has another hash.

Sinks:
- a file, opened for appending at each write (put it on another volume, ideally append-only:
  `chattr +a`, a WORM bucket mount, a log shipper that tails it);
- syslog (`syslog`, `syslog:/dev/log`, `syslog:HOST:PORT` for UDP): for a SIEM to keep; `verify`
  reads the file form, so a syslog anchor is checked by exporting its lines to a file.

One JSON line per anchor: {"chain", "hash", "host", "seq", "time", "v"}. `chain` names one
hash chain (each façade worker writes its own, workers.py), so one anchor file can serve them all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from autoglm.server.audit.sink import AuditSink
from autoglm.server.audit.writer import rfc3339

__all__ = ["Anchor", "AnchorSink", "anchor_sink", "read_anchors", "start_anchoring"]

log = logging.getLogger("autoglm.server.audit")

ANCHOR_VERSION = 1


@dataclass(frozen=True)
class Anchor:
    chain: str
    seq: int
    hash: str
    time: str = ""
    host: str = ""

    def line(self) -> str:
        body = {
            "chain": self.chain,
            "hash": self.hash,
            "host": self.host,
            "seq": self.seq,
            "time": self.time,
            "v": ANCHOR_VERSION,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


class AnchorSink:
    """Appends anchors to a file or sends them to syslog; remembers the last head written."""

    def __init__(self, target: str, chain: str) -> None:
        self.target = target
        self.chain = chain
        self._host = socket.gethostname()
        self._last: tuple[int, str] | None = None
        self._syslog: logging.handlers.SysLogHandler | None = None
        self._path: Path | None = None
        if target == "syslog" or target.startswith("syslog:"):
            self._syslog = _syslog_handler(target.removeprefix("syslog").removeprefix(":"))
        else:
            self._path = Path(target)
            self._path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, head: tuple[int, str]) -> bool:
        """Anchor `head` unless it is the one last anchored (or the empty chain). True if written.

        Raises OSError when the sink cannot be written; the caller logs and retries next time.
        """
        seq, digest = head
        if seq == 0 or head == self._last:
            return False
        anchor = Anchor(self.chain, seq, digest, rfc3339(datetime.now(UTC)), self._host)
        line = anchor.line()
        if self._syslog is not None:
            record = logging.LogRecord("autoglm.audit", logging.INFO, "", 0, line, None, None)
            self._syslog.emit(record)  # SysLogHandler.emit reports errors via handleError
        else:
            assert self._path is not None
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        self._last = head
        return True

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()


class _RaisingSysLogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        raise  # the exception being handled: the caller logs and counts it


def _syslog_handler(address: str) -> logging.handlers.SysLogHandler:
    """`""` → /dev/log; `/path` → that unix socket; `HOST:PORT` → UDP."""
    if not address:
        target: str | tuple[str, int] = "/dev/log"
    elif address.startswith("/"):
        target = address
    else:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"audit anchor: syslog address {address!r} is not /PATH or HOST:PORT")
        target = (host, int(port))
    handler = _RaisingSysLogHandler(
        address=target, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
    )
    handler.ident = "autoglm-audit: "
    return handler


def anchor_sink(target: str | None, audit_path: Path) -> AnchorSink | None:
    """The sink of `--audit-anchor`, naming the chain by host and log path."""
    if not target:
        return None
    return AnchorSink(target, chain=f"{socket.gethostname()}:{audit_path.resolve()}")


def start_anchoring(
    target: str | None, interval_s: float, audit: AuditSink, *, on_failure: Callable[[], None]
) -> asyncio.Task[None] | None:
    """The task that anchors `audit`'s chain to `target` (None when either is off); cancel it
    after the audit sink has drained: it anchors the final head once more on the way out."""
    if audit.writer is None or not target:
        return None
    sink = anchor_sink(target, audit.writer.path)
    assert sink is not None
    return asyncio.create_task(_anchor_loop(sink, audit, interval_s, on_failure))


async def _anchor_loop(
    sink: AnchorSink, audit: AuditSink, interval_s: float, on_failure: Callable[[], None]
) -> None:
    writer = audit.writer
    assert writer is not None

    def anchor() -> None:
        try:
            sink.write(writer.head)
        except (OSError, ValueError) as exc:
            on_failure()
            log.error("audit anchor %s not written: %s", sink.target, exc)

    try:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(anchor)
    finally:
        anchor()
        sink.close()


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor line of a file (unreadable lines raise ValueError naming the line)."""
    return list(_parse(path.read_text(encoding="utf-8").splitlines(), path))


def _parse(lines: Iterable[str], path: Path) -> Iterator[Anchor]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text[text.index("{") :])  # syslog exports keep a prefix
            yield Anchor(
                chain=str(data["chain"]),
                seq=int(data["seq"]),
                hash=str(data["hash"]),
                time=str(data.get("time", "")),
                host=str(data.get("host", "")),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: not an anchor line ({err})") from None
