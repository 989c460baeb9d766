"""A local OTLP/gRPC trace sink for benchmarks: accepts `TraceService/Export`, counts spans,
keeps none unless asked (`keep_spans`, for a latency breakdown). The façade exports to it like
to a collector on the same host, so tracing costs the façade what it would in production (span
creation, batching, protobuf encoding, a gRPC export) without an external backend (none can be
installed here, facts.md)."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self.kept: list[trace_pb2.Span] | None = None
        self._lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
            if self.kept is not None:
                self.kept.extend(
                    s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
                )
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpSink:
    """`with OtlpSink() as sink:` → export to `sink.endpoint` (http://127.0.0.1:<port>)."""

    def __init__(self) -> None:
        self._service = _Service()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._service, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spans(self) -> int:
        return self._service.spans

    def keep_spans(self) -> list[trace_pb2.Span]:
        """From now on also keep every span received, in the returned list (grows as they come)."""
        kept: list[trace_pb2.Span] = []
        with self._service._lock:
            self._service.kept = kept
        return kept

    def __enter__(self) -> OtlpSink:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(None)
