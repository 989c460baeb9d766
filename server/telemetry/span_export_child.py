"""The façade's span exporter process: OTLP encoding and export off the façade's GIL (issue #8).

Started by `span_offload.OffloadSpanProcessor` as
`python -m autoglm.server.telemetry.span_export_child`.
It reads frames (span_wire.py) on stdin:

- `("init", WIRE_VERSION, settings, resource attributes, resource schema url, log setup)` first;
- `("spans", [flat, …])`: rebuilt and handed to an OpenTelemetry `BatchSpanProcessor` around
  the exporter the façade would have used in-process (`tracing.exporter_for`: the same OTLP
  protocol, endpoint, headers and TLS choice from the settings and the `OTEL_*` variables; the
  `OTEL_BSP_*` variables apply here);
- `("flush", n)`: exports everything received so far, then answers `("ack", n, ok)` on stdout;

and at the end of stdin (the façade closed it at shutdown, or died) shuts the processor down,
which exports what is left, and exits.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import BinaryIO

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from autoglm.server.telemetry import logs, tracing
from autoglm.server.telemetry.span_wire import WIRE_VERSION, FrameReader, ScopeCache, frame, rebuild

log = logging.getLogger("autoglm.server.span_export")


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Run the protocol on `inp`/`out` until `inp` ends; the process's exit code."""
    reader = FrameReader(inp)
    init = reader.read()
    if init is None:
        return 0
    kind, version, fields, attributes, schema_url, log_setup = init
    if log_setup is not None:
        logs.setup_logging(*log_setup)
    if kind != "init" or version != WIRE_VERSION:
        log.error("span exporter: expected init version %s, got %r %r", WIRE_VERSION, kind, version)
        return 2
    settings = tracing.TracingSettings(**fields)
    resource = Resource(attributes, schema_url)
    try:
        exporter = tracing.exporter_for(settings)
    except Exception as exc:  # the façade built the same exporter at start-up; say why here
        log.error("span exporter: cannot build the exporter: %r", exc)
        return 2
    processor = BatchSpanProcessor(exporter)
    scopes = ScopeCache()
    try:
        while (message := reader.read()) is not None:
            if message[0] == "spans":
                for flat in message[1]:
                    processor.on_end(rebuild(flat, resource, scopes))
            elif message[0] == "flush":
                ok = processor.force_flush()
                out.write(frame(("ack", message[1], bool(ok))))
                out.flush()
            else:
                log.error("span exporter: unknown message %r", message[0])
                return 2
    finally:
        processor.shutdown()  # exports what is queued
    return 0


def main() -> int:
    # The façade decides when this process ends, by closing its stdin: a Ctrl-C in a terminal
    # (the whole process group) or a SIGTERM to every process of a service's cgroup must not
    # end it before the façade's last spans have come through.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    raise SystemExit(main())
