"""The one place where failures become gRPC status codes.

Servicer code raises the domain exceptions below; `status_for` turns any exception into a
`grpc.Status` (with google.rpc details: BadRequest field violations, RetryInfo). Anything that is
not a ServiceError is INTERNAL with the request id only; the traceback goes to the log, never to
the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure the caller is told about; `code` is the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

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


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class EngineUnavailable(ServiceError):
    """Triton cannot be reached or the model is not ready: retryable."""

    code = grpc.StatusCode.UNAVAILABLE


class EngineFailure(ServiceError):
    """The engine reported an error for this request: not the caller's fault."""

    code = grpc.StatusCode.INTERNAL


def status_for(exc: BaseException, *, request_id: str) -> grpc.Status:
    """Map an exception to the status the caller receives (logging unexpected ones)."""
    if isinstance(exc, ServiceError):
        code, message, details = exc.code, exc.message, exc.details()
        if isinstance(exc, EngineFailure):
            log.error("request %s: engine failure: %s", request_id, exc.message)
            message = f"the engine failed to serve the request (request id {request_id})"
    else:
        log.error("request %s: unexpected error", request_id, exc_info=exc)
        code, message, details = (
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id})",
            [],
        )
    status = status_pb2.Status(code=_code_number(code), message=message, details=details)
    return rpc_status.to_status(status)


def _code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    return int(number) if number in code_pb2.Code.values() else code_pb2.INTERNAL
