"""The one place where failures become status codes: gRPC's, and HTTP's for the OpenAI API.

Code behind both front doors raises the domain exceptions below. `status_for` turns any
exception into a `grpc.Status` (with google.rpc details: BadRequest field violations,
RetryInfo); `http_error_for` into an HTTP status, OpenAI's error body and headers
(`Retry-After`). Anything that is not a ServiceError is INTERNAL (HTTP 500) with the request id
only; the traceback goes to the log, never to the caller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure the caller is told about; `code` is the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # the request field at fault, when there is one (HTTP's `param`)

    def details(self) -> list[any_pb2.Any]:
        return []


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{field}: {desc}" for field, desc in self.violations))

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    """The request is well-formed but the system is not in a state to serve it (e.g. the model
    version that answers this caller was built without what the request needs)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, limit: str = "other"
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limit = limit  # which limit refused: a metrics label

    def details(self) -> list[any_pb2.Any]:
        if self.retry_after_s is None:
            return []
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_s * 1e9))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return [packed]


class RequestTooLarge(ServiceError):
    """A request body over the configured limit (HTTP 413; gRPC's own limit answers
    RESOURCE_EXHAUSTED before any handler runs)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class EngineUnavailable(ServiceError):
    """Triton cannot be reached or the model is not ready: retryable."""

    code = grpc.StatusCode.UNAVAILABLE


class AuditUnavailable(ServiceError):
    """The audit log cannot be written and the operator requires it (`--audit-required`)."""

    code = grpc.StatusCode.UNAVAILABLE


class EngineFailure(ServiceError):
    """The engine reported an error for this request: not the caller's fault."""

    code = grpc.StatusCode.INTERNAL


def reason_of(exc: BaseException) -> str | None:
    """What refused a call, for its audit record: the limit, else the request fields at fault."""
    if isinstance(exc, ResourceExhausted):
        return exc.limit
    if isinstance(exc, InvalidArgument):
        return ",".join(dict.fromkeys(f for f, _ in exc.violations)) or None
    return exc.field if isinstance(exc, ServiceError) else None


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code an exception stands for (metrics and audit records of both front doors)."""
    return exc.code if isinstance(exc, ServiceError) else grpc.StatusCode.INTERNAL


def _caller_message(exc: BaseException, request_id: str) -> str:
    """What the caller is told; engine failures and unexpected errors are logged, not told."""
    if isinstance(exc, EngineFailure):
        log.error("request %s: engine failure: %s", request_id, exc.message)
        return f"the engine failed to serve the request (request id {request_id})"
    if isinstance(exc, ServiceError):
        return exc.message
    log.error("request %s: unexpected error", request_id, exc_info=exc)
    return f"internal error (request id {request_id})"


def status_for(exc: BaseException, *, request_id: str) -> grpc.Status:
    """Map an exception to the status the caller receives (logging unexpected ones)."""
    details = exc.details() if isinstance(exc, ServiceError) else []
    status = status_pb2.Status(
        code=_code_number(code_of(exc)),
        message=_caller_message(exc, request_id),
        details=details,
    )
    return rpc_status.to_status(status)


# gRPC code → (HTTP status, OpenAI error type). The types are the ones OpenAI's API returns
# (and its SDKs map to exception classes by status). Bad input is always 4xx: the SDK retries
# 408, 409, 429 and 5xx, so a 5xx for a caller's mistake would be sent again and again.
_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
# Machine-readable `code`s of OpenAI's error object for the cases clients branch on.
_OPENAI_CODES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: "invalid_api_key",
    grpc.StatusCode.NOT_FOUND: "model_not_found",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limit_exceeded",
}


def http_error_for(
    exc: BaseException, *, request_id: str, param_names: Callable[[str], str] | None = None
) -> tuple[int, dict[str, object], dict[str, str]]:
    """(HTTP status, `{"error": {message, type, param, code}}`, headers) for an exception.

    `param_names` turns the plan's field names (e.g. `sampling.max_tokens`) into the front
    door's own (`max_tokens`): `param` and the message name the field the caller sent.
    """
    rename = param_names or (lambda name: name)
    code = code_of(exc)
    status, kind = _HTTP.get(code, (500, "server_error"))
    param = rename(exc.field) if isinstance(exc, ServiceError) and exc.field else None
    message = _caller_message(exc, request_id)
    if isinstance(exc, InvalidArgument) and exc.violations:
        renamed = [(rename(f), d) for f, d in exc.violations]
        param = renamed[0][0]
        message = "; ".join(f"{f}: {d}" for f, d in renamed)
    headers: dict[str, str] = {}
    openai_code = _OPENAI_CODES.get(code)
    if isinstance(exc, RequestTooLarge):
        status, kind, openai_code = 413, "invalid_request_error", "request_too_large"
    elif (after := getattr(exc, "retry_after_s", None)) is not None and status in (429, 503):
        # A limit (429) or a store that usually comes back (503: shared_limits.LimitsUnavailable)
        # says when to try again, as its RetryInfo does on gRPC. Retry-After takes whole seconds
        # (RFC 9110 §10.2.3, for 429 and 503 alike): round up, never 0.
        headers["retry-after"] = str(max(1, math.ceil(after)))
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        headers["www-authenticate"] = "Bearer"
    error: dict[str, object] = {
        "message": message,
        "type": kind,
        "param": param,
        "code": openai_code,
    }
    return status, {"error": error}, headers


def _code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    return int(number) if number in code_pb2.Code.values() else code_pb2.INTERNAL
