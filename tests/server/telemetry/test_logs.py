"""Structured logs: JSON fields, trace and request ids, redaction, and the CLI options."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from autoglm.server import cli
from autoglm.server.telemetry import logs

TOKEN = "agm_0123456789ab_" + "S" * 40 + "-_x"  # server/security/bearer_tokens.py's format
SECRET = "S" * 40


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """setup_logging() into a buffer; the root logger's previous state is restored after."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    buffer = io.StringIO()
    logs.setup_logging("DEBUG", "json", stream=buffer)
    yield buffer
    for handler in [h for h in root.handlers if h not in saved[1]]:
        root.removeHandler(handler)
    root.setLevel(saved[0])
    logging.captureWarnings(False)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_fields(out: io.StringIO) -> None:
    logging.getLogger("autoglm.server.requests").info("Generate %s status=%s", "r1", "OK")
    [line] = lines(out)
    assert list(line) == ["time", "level", "logger", "message"]  # no ids outside a request
    assert line["level"] == "INFO"
    assert line["logger"] == "autoglm.server.requests"
    assert line["message"] == "Generate r1 status=OK"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert datetime.fromisoformat(line["time"]).utcoffset() is not None  # RFC 3339, with zone


def test_exception_is_one_field(out: io.StringIO) -> None:
    try:
        raise RuntimeError("engine went away")
    except RuntimeError:
        logging.getLogger("autoglm.server").exception("request %s failed", "r2")
    [line] = lines(out)  # the traceback does not break the one-line-per-record format
    assert line["level"] == "ERROR"
    assert line["message"] == "request r2 failed"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert line["exc"].endswith("RuntimeError: engine went away")


def test_trace_and_span_ids_inside_a_span(out: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("rpc") as span:
        logging.getLogger("autoglm.server").info("inside")
    logging.getLogger("autoglm.server").info("outside")
    inside, outside = lines(out)
    ctx = span.get_span_context()
    assert inside["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside["span_id"] == f"{ctx.span_id:016x}"
    assert "trace_id" not in outside and "span_id" not in outside


def test_request_context(out: io.StringIO) -> None:
    log = logging.getLogger("autoglm.server")
    with logs.request_context("req-123"):
        log.info("in")
    log.info("out")
    first, second = lines(out)
    assert first["request_id"] == "req-123"
    assert "request_id" not in second


async def test_bound_request_id_stays_in_its_task(out: io.StringIO) -> None:
    log = logging.getLogger("autoglm.server")

    async def rpc(request_id: str) -> None:  # as grpc.aio runs each RPC: its own task
        logs.bind_request_id(request_id)
        await asyncio.sleep(0)
        log.info("done %s", request_id)

    await asyncio.gather(rpc("a"), rpc("b"))
    log.info("after")
    by_message = {
        line["message"]: line.get("request_id")
        for line in lines(out)
        if line["logger"] == "autoglm.server"  # not asyncio's own debug lines
    }
    assert by_message == {"done a": "a", "done b": "b", "after": None}


@pytest.mark.parametrize(
    ("message", "args", "expected"),
    [
        ("token %s", (TOKEN,), "token agm_0123456789ab_***"),
        (f"bad token {TOKEN}.", (), "bad token agm_0123456789ab_***."),
        (
            "metadata %s",
            ((("authorization", "Bearer xyz.abc"),),),
            "metadata (('authorization', 'Bearer ***'),)",
        ),
        ("Authorization: Bearer %s", ("opaque-value",), "Authorization: Bearer ***"),
        ("header authorization=%s", ("basic-creds",), "header authorization=***"),
        ('{"authorization": "%s"}', (TOKEN,), '{"authorization": "agm_0123456789ab_***"}'),
        ("sent Bearer %s", (TOKEN,), "sent Bearer agm_0123456789ab_***"),
        ("nothing secret: agm_ prefix, bearer", (), "nothing secret: agm_ prefix, bearer"),
    ],
)
def test_redaction(out: io.StringIO, message: str, args: tuple[Any, ...], expected: str) -> None:
    logging.getLogger("third.party").warning(message, *args)
    [line] = lines(out)
    assert line["message"] == expected


def test_redaction_reaches_tracebacks_and_broken_calls(out: io.StringIO) -> None:
    log = logging.getLogger("autoglm.server")
    try:
        raise ValueError(f"cannot parse {TOKEN}")
    except ValueError:
        log.exception("failed")
    log.info("%d tokens", TOKEN)  # a broken call still logs, and still redacted
    text = out.getvalue()
    assert SECRET not in text
    failed, broken = lines(out)
    assert "agm_0123456789ab_***" in failed["exc"]
    assert "agm_0123456789ab_***" in broken["message"]


def test_text_format_and_replacing_setup(out: io.StringIO) -> None:
    text = io.StringIO()
    logs.setup_logging("WARNING", "text", stream=text)
    log = logging.getLogger("autoglm.server")
    log.info("dropped")
    with logs.request_context("r9"):
        log.warning("kept %s", TOKEN)
    assert out.getvalue() == ""  # the earlier handler was replaced, not doubled
    assert re.fullmatch(
        r"\S+ \S+ WARNING autoglm\.server: kept agm_0123456789ab_\*\*\* \[request_id=r9\]\n",
        text.getvalue(),
    )


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="log level"):
        logs.setup_logging("LOUD")
    with pytest.raises(ValueError, match="log format"):
        logs.setup_logging("INFO", "xml")  # type: ignore[arg-type]


def test_cli_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(logs, "setup_logging", lambda level, fmt: calls.append((level, fmt)))
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    cli.main(["--log-level", "warning", "--log-format", "text", "audit", "verify", "/nonexistent"])
    cli.main(["audit", "verify", "/nonexistent"])
    cli.main(["-v", "audit", "verify", "/nonexistent"])
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    cli.main(["audit", "verify", "/nonexistent"])
    assert calls == [
        ("WARNING", "text"),
        ("INFO", "json"),  # not a terminal: JSON for the log pipeline
        ("DEBUG", "json"),
        ("INFO", "text"),  # a terminal: text for people
    ]
