"""Append-only, hash-chained JSON-lines audit log: one line per call or decision, tamper-evident.

Every line is the canonical JSON (sorted keys, no whitespace, ASCII) of a record plus
  seq   1, 2, 3, … across the whole chain (rotated files included),
  prev  the `hash` of the previous line (GENESIS for the first record ever),
  hash  sha256 of the canonical JSON of the line without `hash`.
Editing, deleting, reordering or inserting a line breaks the chain at that line and `verify`
names it. What a keyless chain cannot show: an attacker who can rewrite the files may recompute
every hash from the edit onwards, or drop the newest lines. Ship the head (`VerifyResult.head`)
off the host regularly to close that gap (see docs/security.md).

Files rotate by size like logging.handlers.RotatingFileHandler: audit.jsonl → audit.jsonl.1 → …,
and the first record of a new file links to the last record of the previous one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from autoglm.server.audit.pii import mask_pii

__all__ = [
    "GENESIS",
    "AuditError",
    "AuditRecord",
    "AuditWriter",
    "principal_fields",
    "rotated_files",
]

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
FORMAT_VERSION = 1
DEFAULT_NAME = "audit.jsonl"
_READ_CHUNK = 64 * 1024
# The bearer token format of security/bearer_tokens.py. A full token given as token_id, or
# pasted into a prompt, is cut down to its id: the secret must never reach the log, whatever the
# caller passes.
_TOKEN_RE = re.compile(r"agm_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")


class AuditError(Exception):
    """The audit log cannot be written or continued."""


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """What one RPC leaves in the audit log. Never the bearer token: only its id."""

    request_id: str
    rpc: str
    status: str | grpc.StatusCode  # stored as the code name, e.g. "RESOURCE_EXHAUSTED"
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    trace_id: str | None = None
    principal: str | None = None
    cert_identity: str | None = None
    token_id: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: float = 0.0
    finish_reason: str | None = None
    # The caller's address as the transport reports it ("ipv4:10.0.0.7:51234"); None for records
    # that are not calls (token administration, version switches).
    peer: str | None = None
    # Why the call was refused: the auth failure ("expired", "scope", "jwt_audience", …), the
    # limit ("rate", "principal_concurrency", …) or another refusal's cause; None when served.
    reason: str | None = None
    # What an administrative record acted on: a token id, "model:version".
    target: str | None = None
    # Stored only by a writer with record_text=True, and then masked with mask_pii.
    prompt: str | None = None
    completion: str | None = None
    # The model version that answered a generation (repository models; canary.py routes).
    model_version: int | None = None
    # The LoRA adapter a generation ran with (a tenant's fine-tune on the shared base engine).
    adapter: str | None = None


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(AuditRecord))


def principal_fields(principal: Any) -> dict[str, str | None]:
    """The AuditRecord fields of an auth.Principal (or None for open methods)."""
    if principal is None:
        return {"principal": None, "cert_identity": None, "token_id": None}
    return {
        "principal": principal.name,
        "cert_identity": principal.cert_identity,
        "token_id": principal.token_id,
    }


def rfc3339(moment: datetime) -> str:
    """UTC, millisecond precision, "Z" suffix: sorts lexically, parses everywhere."""
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical_json(obj: dict[str, Any]) -> bytes:
    # ensure_ascii: the hashed bytes do not depend on an encoding, and a lone surrogate in a
    # prompt cannot make the write fail.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(entry: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of `entry` without its "hash" key."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _record_fields(record: AuditRecord, *, record_text: bool) -> dict[str, Any]:
    # A shallow copy: dataclasses.asdict deep-copies every value (~50 µs a record).
    fields = {name: getattr(record, name) for name in _RECORD_FIELDS}
    fields["time"] = rfc3339(record.time)
    status = record.status
    fields["status"] = status.name if isinstance(status, grpc.StatusCode) else str(status)
    fields["duration_ms"] = round(float(record.duration_ms), 3)
    if record.token_id is not None:
        fields["token_id"] = _token_id_only(record.token_id)
    for optional in ("model_version", "adapter"):  # only generations that have one
        if fields[optional] is None:
            del fields[optional]
    for key in ("prompt", "completion"):
        text = fields.pop(key)
        if record_text and text is not None:
            fields[key] = _TOKEN_RE.sub(r"agm_\1_[SECRET]", mask_pii(text))
    return fields


def _token_id_only(value: str) -> str:
    match = _TOKEN_RE.fullmatch(value) or _TOKEN_RE.search(value)
    if match is None:
        return value
    logger.error("audit: a full bearer token was passed as token_id; only its id is recorded")
    return match.group(1)


# --- writing --------------------------------------------------------------------------------


@dataclass
class _Head:
    seq: int = 0
    hash: str = GENESIS


class AuditWriter:
    """Appends records to `path`, one flushed (and by default fsync'ed) line per record.

    Thread-safe. From asyncio, `write` blocks the loop for one append (+ fsync); `awrite` runs the
    same in the default executor. One writer per file: a second one (another process included)
    fails on the lock file instead of forking the chain.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        record_text: bool = False,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 20,
        fsync: bool = True,
    ) -> None:
        if max_bytes <= 0 or backups < 1:
            raise ValueError("max_bytes must be positive and backups at least 1")
        self._path = Path(path)
        self._record_text = record_text
        self.record_text = record_text
        self._max_bytes = max_bytes
        self._backups = backups
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._broken: str | None = None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _acquire_lock(self._path.with_name(self._path.name + ".lock"))
        try:
            self._head = self._recover()
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    @property
    def path(self) -> Path:
        return self._path

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record written: what to anchor off the host."""
        with self._lock:
            return self._head.seq, self._head.hash

    def write(self, record: AuditRecord) -> dict[str, Any]:
        """Appends `record`; returns the entry as written (with seq, prev, hash)."""
        fields = _record_fields(record, record_text=self._record_text)
        with self._lock:
            if self._broken is not None:
                raise AuditError(f"audit log {self._path} is unusable: {self._broken}")
            if self._fd is None:
                raise AuditError(f"audit log {self._path} is closed")
            entry = {**fields, "v": FORMAT_VERSION, "seq": self._head.seq + 1}
            entry["prev"] = self._head.hash
            entry["hash"] = record_hash(entry)
            line = canonical_json(entry) + b"\n"
            if self._size > 0 and self._size + len(line) > self._max_bytes:
                self._rotate_or_fail()
            self._append(line)
            self._head = _Head(entry["seq"], entry["hash"])
            return entry

    async def awrite(self, record: AuditRecord) -> dict[str, Any]:
        """`write` off the event loop: for fsync'ed logs on slow disks."""
        return await asyncio.to_thread(self.write, record)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = -1

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals (called with self._lock held, or from __init__) ---------------------------

    def _open(self) -> None:
        # O_APPEND: every write lands at the end even if something else extends the file.
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        _fsync_dir(self._path.parent)

    def _append(self, line: bytes) -> None:
        assert self._fd is not None  # checked by write()
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            if self._fsync:
                os.fsync(self._fd)
        except OSError as err:
            self._undo_partial_write(err)
            raise AuditError(f"cannot append to audit log {self._path}: {err}") from err
        self._size += len(line)

    def _undo_partial_write(self, err: OSError) -> None:
        # A partial line followed by the next record would corrupt the middle of the file; cut it
        # off, or refuse every later write if even that fails.
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as trunc_err:
            self._broken = f"write failed ({err}) and truncation failed ({trunc_err})"
            logger.critical("audit log %s: %s", self._path, self._broken)

    def _rotate_or_fail(self) -> None:
        try:
            self._rotate()
            return
        except OSError as err:
            failure = err
        # Losing the record would be worse than an oversized file: keep appending to whatever file
        # is now at `path` (the order of the files stays chronological, so the chain stays
        # verifiable) and try to rotate again on the next write.
        logger.error("audit log %s: rotation failed: %s", self._path, failure)
        if self._fd is None:
            try:
                self._open()
            except OSError as open_err:
                self._broken = f"rotation failed ({failure}) and reopening failed ({open_err})"
                logger.critical("audit log %s: %s", self._path, self._broken)
                raise AuditError(f"audit log {self._path} is unusable: {self._broken}") from None

    def _rotate(self) -> None:
        assert self._fd is not None
        if not self._fsync:
            os.fsync(self._fd)  # a rotated file is final: make it durable even without fsync
        os.close(self._fd)
        self._fd = None
        dropped = self._path.with_name(f"{self._path.name}.{self._backups}")
        if dropped.exists():
            logger.warning("audit log rotation drops %s (backups=%d)", dropped, self._backups)
            dropped.unlink()
        for n in range(self._backups - 1, 0, -1):
            src = self._path.with_name(f"{self._path.name}.{n}")
            if src.exists():
                src.rename(self._path.with_name(f"{self._path.name}.{n + 1}"))
        self._path.rename(self._path.with_name(f"{self._path.name}.1"))
        self._open()  # fsyncs the directory: the renames and the new file are durable

    def _recover(self) -> _Head:
        """The chain's head from the newest record on disk, after cutting a torn final line."""
        if self._path.exists():
            _truncate_torn_tail(self._path)
        backups = [p for p in rotated_files(self._path) if p != self._path]
        # The current file is empty right after a rotation (or a crash during one): the head
        # is then the last record of the newest backup.
        for candidate in [self._path, *reversed(backups)]:
            line = _last_line(candidate)
            if line is not None:
                return _head_from(candidate, line)
        return _Head()


def _acquire_lock(lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise AuditError(f"audit log {lock_path} is locked by another writer") from err
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate_torn_tail(path: Path) -> None:
    """Cut bytes after the last newline: a write interrupted by a crash (or a NUL-filled tail)."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = _last_newline_end(f, size)
        if end == size:
            return
        logger.warning(
            "audit log %s: torn final line (%d bytes) removed; the chain continues from the last "
            "complete record",
            path,
            size - end,
        )
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())


def _last_newline_end(f: Any, size: int) -> int:
    """Offset just after the last b"\\n" in the file (0 if none), reading backwards."""
    pos = size
    while pos > 0:
        start = max(0, pos - _READ_CHUNK)
        f.seek(start)
        chunk = f.read(pos - start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return start + idx + 1
        pos = start
    return 0


def _last_line(path: Path) -> bytes | None:
    """The last complete line of `path`, None for a missing or empty file."""
    if not path.exists():
        return None
    with path.open("rb") as f:
        end = _last_newline_end(f, f.seek(0, os.SEEK_END))
        if end == 0:
            return None
        start = _last_newline_end(f, end - 1)
        f.seek(start)
        return f.read(end - 1 - start)


def _head_from(path: Path, line: bytes) -> _Head:
    try:
        entry = json.loads(line)
        head = _Head(int(entry["seq"]), str(entry["hash"]))
    except (ValueError, KeyError, TypeError) as err:
        raise AuditError(
            f"cannot continue the audit chain: the last record of {path} is unreadable ({err}); "
            f"run `autoglm audit verify {path.parent}`"
        ) from err
    if record_hash(entry) != head.hash:
        # Refusing to start would let anyone with write access to the log stop the service; the
        # mismatch stays in the file for verify to report.
        logger.error("audit log %s: the last record (seq %d) fails its hash", path, head.seq)
    return head


def rotated_files(path: Path | str) -> list[Path]:
    """`path`'s rotation set, oldest first: path.N, …, path.1, path (only files that exist)."""
    path = Path(path)
    numbered: list[tuple[int, Path]] = []
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]*)")
    if path.parent.is_dir():
        for child in path.parent.iterdir():
            match = pattern.fullmatch(child.name)
            if match and child.is_file():
                numbered.append((int(match.group(1)), child))
    files = [p for _, p in sorted(numbered, reverse=True)]
    return [*files, path] if path.is_file() else files
