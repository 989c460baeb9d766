"""Server-Sent Events as the OpenAI path reads them (pure, no I/O): the event stream's framing,
the completion chunks' fields the bench needs, and how a request's token count from `usage`
is spread over the chunks that carried its text.

Framing per the WHATWG HTML standard, "Server-sent events", §9.2.6 "Interpreting an event
stream": lines end with CRLF, LF or CR; a blank line dispatches the event; `data:` lines are
joined with LF (one optional space after the colon is dropped); lines starting with `:` are
comments; other fields (`event`, `id`, `retry`) do not matter here. Bytes arrive split anywhere
(TLS records, HTTP chunks), so the parser keeps what it has not seen the end of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DONE = b"[DONE]"  # OpenAI's end-of-stream sentinel: `data: [DONE]`


class SseParser:
    """`feed(bytes)` → the `data` of every event completed by them, as bytes."""

    __slots__ = ("_buf", "_cr", "_data")

    def __init__(self) -> None:
        self._buf = b""  # the start of a line whose end has not arrived
        self._data: list[bytes] = []  # `data` lines of the event being read
        self._cr = False  # the last byte fed was a CR ending a line (a LF may follow)

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the LF of a CRLF split across two reads
        self._cr = False
        if not chunk:
            return []
        buf = self._buf + chunk
        if b"\r" in buf:
            self._cr = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()  # no line end yet (b"" when the chunk ended one)
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data"):
                field, _, value = line.partition(b":")
                if field == b"data":
                    self._data.append(value[1:] if value.startswith(b" ") else value)
            # else a comment (":…") or a field the bench does not use
        return events

    @property
    def pending(self) -> bool:
        """True when bytes of an event that was not completed have been fed."""
        return bool(self._buf or self._data)


@dataclass(frozen=True, slots=True)
class Chunk:
    """What the bench takes from one streamed completion chunk."""

    text: str  # the choice's new text (`text`, or chat's `delta.content`); "" when none
    completion_tokens: int | None = None  # from `usage`, on the include_usage chunk
    finish_reason: str | None = None


class StreamError(Exception):
    """The server's error, as an HTTP status or as an `error` event mid-stream; `status_name`
    is what the bench records (loadgen.timed), e.g. HTTP_429 or SSE_ERROR."""

    def __init__(self, status_name: str, message: str) -> None:
        super().__init__(f"{status_name}: {message}")
        self.status_name = status_name


def read_chunk(obj: Any) -> Chunk:
    """One decoded `data:` payload → Chunk; StreamError for an `error` event or a payload that
    is not a completion chunk."""
    if not isinstance(obj, dict):
        raise StreamError("SSE_BAD_CHUNK", f"not a JSON object: {obj!r:.200}")
    if (err := obj.get("error")) is not None:
        message = err.get("message", err) if isinstance(err, dict) else err
        raise StreamError("SSE_ERROR", str(message))
    text = ""
    finish = None
    choices = obj.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        text = (delta.get("content") if delta is not None else choice.get("text")) or ""
        finish = choice.get("finish_reason")
    usage = obj.get("usage")
    completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return Chunk(text, completion, finish)


def token_split(total: int, weights: Sequence[int]) -> list[int]:
    """Spread a request's `total` completion tokens (its `usage`) over the chunks that carried
    its text, whose lengths are `weights`.

    The OpenAI chunk shape says how much text a chunk holds, not how many tokens: each chunk
    with text holds at least one, and what the server coalesced beyond that (total > chunks,
    e.g. unpaced) goes by text length, largest remainder first, so the counts add up to
    `total` exactly. When total == chunks (one token a chunk, as paced) every chunk gets 1.
    Fewer tokens than chunks (a server bug) leaves the last chunks at 0.
    """
    n = len(weights)
    if n == 0:
        return []
    if total <= n:
        return [1] * total + [0] * (n - total)
    extra = total - n
    mass = sum(weights)
    shares = [extra * w / mass for w in weights] if mass > 0 else [extra / n] * n
    counts = [1 + int(s) for s in shares]
    left = total - sum(counts)
    by_remainder = sorted(range(n), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    for i in by_remainder[:left]:
        counts[i] += 1
    return counts
