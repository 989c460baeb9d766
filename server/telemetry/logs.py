"""Structured logs of the façade: one JSON object per line (or text for a terminal).

Fields of a JSON line, in this order:
    time        RFC 3339, UTC, milliseconds ("2025-01-31T12:00:00.123Z")
    level       DEBUG | INFO | WARNING | ERROR | CRITICAL
    logger      the logger's name ("autoglm.server.requests")
    message     the formatted message, secrets redacted
    trace_id    32 hex digits, span_id 16 hex digits: the current OpenTelemetry span, if any
    request_id  the RPC's request id, when bound with `request_context` / `bind_request_id`
    exc         the formatted traceback, when the record has one (also redacted)
    stack       the stack, for `stack_info=True`

Redaction is defense in depth: the façade never logs metadata values on purpose, but a token
pasted into a prompt that ends up in an error message, or a third-party library that logs call
metadata, must not put a bearer secret into the log pipeline. Token ids stay (`agm_<id>_***`),
so an operator can still tell which token was used (the token format of bearer_tokens.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from opentelemetry import trace

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "bind_request_id",
    "current_request_id",
    "redact",
    "request_context",
    "setup_logging",
]

LogFormat = Literal["json", "text"]
FORMATS: tuple[LogFormat, ...] = ("json", "text")

_request_id: ContextVar[str | None] = ContextVar("autoglm_request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(request_id: str) -> None:
    """Tag every later log line of the current task with `request_id`.

    No reset is needed in a grpc.aio servicer: each RPC runs in its own task, and a task runs in
    its own copy of the context, so the value ends with the RPC."""
    _request_id.set(request_id)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Tag the log lines logged inside the block with `request_id`."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        # An async generator finalized from another task (e.g. at loop shutdown) runs this in a
        # different context, where the token is not valid (ValueError); that context is dropped.
        with suppress(ValueError):
            _request_id.reset(token)


# --- redaction ---------------------------------------------------------------------------------

# `agm_<12 hex id>_<secret>`: any secret length, so that a truncated token is hidden too.
_TOKEN = re.compile(r"agm_([0-9a-f]{12})_[A-Za-z0-9_-]+")
# An `authorization` value ("authorization: x", "authorization=x", "('authorization', 'x')",
# '"authorization": "x"') or a bearer credential anywhere ("Bearer x").
_CREDENTIAL = re.compile(
    r"""(authorization['"]?\s*[:=,]\s*['"]?(?:bearer\s+)?|\bbearer\s+)([^\s'",;)\]}]+)""",
    re.IGNORECASE,
)
_REDACTED_TOKEN = re.compile(r"agm_[0-9a-f]{12}_\*\*\*")


def _credential(match: re.Match[str]) -> str:
    value = match.group(2)
    # Keep an already redacted token's id; hide anything else whole.
    return match.group(1) + (value if _REDACTED_TOKEN.fullmatch(value) else "***")


def redact(text: str) -> str:
    """`text` with bearer secrets and authorization values replaced by `***`."""
    return _CREDENTIAL.sub(_credential, _TOKEN.sub(r"agm_\1_***", text))


class RedactingFilter(logging.Filter):
    """Redacts the message (after %-formatting, so secrets in args are caught) and traceback.

    Put it on the handler: a handler's filters see the records of every logger, a logger's
    filters only the records logged on that very logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken call (`log.info("%d", "x")`): logging would print msg and args raw to
            # stderr from the formatter; keep the line, redacted, and raise nothing here (an
            # exception in a filter would reach the code that logged).
            message = f"{record.msg!s} (args: {record.args!r})"
        clean = redact(message)
        if clean != message or record.args:
            # Store the formatted text so that no later formatter re-reads the raw args.
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# --- context and formatting --------------------------------------------------------------------


class ContextFilter(logging.Filter):
    """Copies the current trace/span id and request id onto the record, at the logging call.

    (Handlers format in the caller's thread and context; a record carried elsewhere, e.g. by a
    QueueHandler, keeps the values taken here.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = trace.format_trace_id(ctx.trace_id)
            record.span_id = trace.format_span_id(ctx.span_id)
        request_id = _request_id.get()
        if request_id:
            record.request_id = request_id
        return True


def _rfc3339(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("trace_id", "span_id", "request_id"):
            value = getattr(record, key, None)
            if value:
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii=False keeps UTF-8 text readable; json escapes newlines, one line each.
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The previous `basicConfig` format, plus the ids when there are any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = [
            f"{key}={value}"
            for key in ("request_id", "trace_id")
            if (value := getattr(record, key, None))
        ]
        return f"{line} [{' '.join(ids)}]" if ids else line


# --- set-up ------------------------------------------------------------------------------------


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so that a second set-up replaces it."""


def current_setup() -> tuple[str, LogFormat] | None:
    """(level, format) of the handler `setup_logging` installed, for a child process to log
    the same way; None without one."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, _Handler):
            fmt: LogFormat = "json" if isinstance(handler.formatter, JsonFormatter) else "text"
            return logging.getLevelName(root.level), fmt
    return None


def setup_logging(
    level: str = "INFO", fmt: LogFormat = "json", stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records to `stream` (default stderr) in `fmt`; return the handler.

    Replaces the handler an earlier call installed (and no other), so that tests and the CLI can
    call it more than once. Raises ValueError for an unknown level or format."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)  # warnings.warn(...) become log records in the same format
    return handler
