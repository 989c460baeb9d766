"""Which span processor exports the façade's spans (`autoglm serve --span-export`).

- "child": `span_offload.OffloadSpanProcessor`, OTLP encoding and export in a child process
  (span_export_child.py), off the façade's GIL;
- "batch": the SDK's `BatchSpanProcessor` in the façade's own process (it reads the
  `OTEL_BSP_*` variables itself), with the same OTLP exporter.

Kept free of heavy imports: settings.py and the CLI's parser read it before tracing loads.
The default is the one measured best with `autoglm bench` (docs/observability.md, "Which span
processor").
"""

from __future__ import annotations

SPAN_EXPORTS = ("child", "batch")
# Paced 64 streams, median added p99 inter-token latency: 4.2 ms with "child", 6.9 ms with
# "batch"; CPU per token level (docs/observability.md).
DEFAULT_SPAN_EXPORT = "child"


def check_span_export(value: str, name: str = "span_export") -> None:
    """ValueError naming the setting when `value` is not one of SPAN_EXPORTS."""
    if value not in SPAN_EXPORTS:
        raise ValueError(f"{name}: must be one of {', '.join(SPAN_EXPORTS)}, got {value!r}")
