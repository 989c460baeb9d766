"""The bench's OTLP trace sink: counts every span, keeps them only once asked to."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from autoglm.bench.sink import OtlpSink


def test_counts_spans_and_keeps_them_once_asked() -> None:
    with OtlpSink() as sink:
        provider = TracerProvider()
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=sink.endpoint, insecure=True))
        )
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("before"):
            pass
        kept = sink.keep_spans()
        with tracer.start_as_current_span("after") as span:
            span.add_event("gen_ai.first_token")
        provider.shutdown()
        assert sink.spans == 2
        assert [s.name for s in kept] == ["after"]
        assert [e.name for e in kept[0].events] == ["gen_ai.first_token"]
