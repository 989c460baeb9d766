"""TEST STAND-IN for an OTLP trace backend (Jaeger, Tempo or an OpenTelemetry Collector cannot
be installed on these machines, facts.md "gRPC, TLS, tracing").

It accepts OTLP traces
- over gRPC: `TraceService/Export` (opentelemetry-proto's stubs), on a free port;
- over HTTP: `POST /v1/traces` with a protobuf body (`application/x-protobuf`, what the Python
  exporter sends) or a JSON body (`application/json`, what Triton 2.51's OpenTelemetry mode
  sends, with trace/span ids as hex strings per the OTLP/JSON spec), optionally gzip-encoded;

and keeps the spans as simple dataclasses in a thread-safe list. Both servers run in threads, so
the receiver works the same from sync and async tests. Not for production use.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_STATUS_JSON = {"STATUS_CODE_UNSET": "UNSET", "STATUS_CODE_OK": "OK", "STATUS_CODE_ERROR": "ERROR"}


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # '' for a root span
    name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    status: str = "UNSET"  # UNSET | OK | ERROR
    service_name: str = ""
    transport: str = ""  # grpc | http/protobuf | http/json


# --- protobuf ----------------------------------------------------------------------------------


def _pb_value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _pb_attrs(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in kvs}


def spans_from_protobuf(
    req: trace_service_pb2.ExportTraceServiceRequest, transport: str
) -> list[ReceivedSpan]:
    out = []
    for rs in req.resource_spans:
        service = str(_pb_attrs(rs.resource.attributes).get("service.name", ""))
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(_pb_span(s, service, transport))
    return out


def _pb_span(s: trace_pb2.Span, service: str, transport: str) -> ReceivedSpan:
    return ReceivedSpan(
        trace_id=s.trace_id.hex(),
        span_id=s.span_id.hex(),
        parent_span_id=s.parent_span_id.hex(),
        name=s.name,
        attributes=_pb_attrs(s.attributes),
        events=tuple(e.name for e in s.events),
        status=_STATUS.get(s.status.code, str(s.status.code)),
        service_name=service,
        transport=transport,
    )


# --- OTLP/JSON (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding) ---------------


def _json_id(value: str | None, size: int) -> str:
    # The spec says hex; tolerate base64 (protobuf's generic JSON mapping of bytes) as well.
    if not value:
        return ""
    if len(value) == size * 2:
        try:
            bytes.fromhex(value)
            return value.lower()
        except ValueError:
            pass
    return base64.b64decode(value).hex()


def _json_value(v: dict[str, Any]) -> Any:
    if "arrayValue" in v:
        return [_json_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return _json_attrs(v["kvlistValue"].get("values", []))
    if "intValue" in v:
        return int(v["intValue"])  # int64 is a JSON string in proto3 JSON
    if "doubleValue" in v:
        return float(v["doubleValue"])
    for key in ("stringValue", "boolValue", "bytesValue"):
        if key in v:
            return v[key]
    return None


def _json_attrs(kvs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {kv["key"]: _json_value(kv.get("value", {})) for kv in kvs}


def spans_from_json(body: dict[str, Any]) -> list[ReceivedSpan]:
    out = []
    for rs in body.get("resourceSpans", []):
        service = str(
            _json_attrs(rs.get("resource", {}).get("attributes", [])).get("service.name", "")
        )
        # `instrumentationLibrarySpans` is the pre-1.0 name some C++ exporters still send.
        for ss in rs.get("scopeSpans", []) or rs.get("instrumentationLibrarySpans", []):
            for s in ss.get("spans", []):
                code = s.get("status", {}).get("code", 0)
                out.append(
                    ReceivedSpan(
                        trace_id=_json_id(s.get("traceId"), 16),
                        span_id=_json_id(s.get("spanId"), 8),
                        parent_span_id=_json_id(s.get("parentSpanId"), 8),
                        name=s.get("name", ""),
                        attributes=_json_attrs(s.get("attributes", [])),
                        events=tuple(e.get("name", "") for e in s.get("events", [])),
                        status=_STATUS_JSON.get(code, _STATUS.get(code, str(code)))
                        if isinstance(code, str | int)
                        else str(code),
                        service_name=service,
                        transport="http/json",
                    )
                )
    return out


# --- the receiver -------------------------------------------------------------------------------


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request, context):
        self._receiver._add(spans_from_protobuf(request, "grpc"))
        return trace_service_pb2.ExportTraceServiceResponse()


def _http_handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/v1/traces":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding", "") == "gzip":
                body = gzip.decompress(body)
            ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
            try:
                if ctype == "application/json":
                    spans = spans_from_json(json.loads(body))
                    reply, reply_type = b"{}", "application/json"
                else:
                    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    spans = spans_from_protobuf(req, "http/protobuf")
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                    reply_type = "application/x-protobuf"
            except Exception as exc:  # a malformed body is the sender's bug: say so
                self.send_error(400, f"bad OTLP body: {type(exc).__name__}")
                return
            receiver._add(spans)
            self.send_response(200)
            self.send_header("Content-Type", reply_type)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler


class OtlpReceiver:
    """Use as a context manager; endpoints are valid after `start()`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._spans: list[ReceivedSpan] = []
        self._cond = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port = 0
        self.http_port = 0

    # endpoints in the form the exporters / Triton expect
    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_traces_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/v1/traces"

    @property
    def triton_url(self) -> str:
        """For `--trace-config opentelemetry,url=…` (Triton takes host:port/path, no scheme)."""
        return f"{self.host}:{self.http_port}/v1/traces"

    def start(self) -> OtlpReceiver:
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:0")
        self._grpc.start()
        self._http = ThreadingHTTPServer((self.host, 0), _http_handler(self))
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one poll interval
            name="otlp-receiver-http",
            daemon=True,
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._cond:
            self._spans.extend(spans)
            self._cond.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._cond:
            return list(self._spans)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 5.0
    ) -> list[ReceivedSpan]:
        """Block until `predicate(spans)` holds (checked on every arrival); return the spans.
        TimeoutError names what did arrive, to make a failing test readable."""
        with self._cond:
            if self._cond.wait_for(lambda: predicate(list(self._spans)), timeout=timeout):
                return list(self._spans)
            names = [s.name for s in self._spans]
        raise TimeoutError(f"OTLP receiver: condition not met in {timeout} s; spans: {names}")
