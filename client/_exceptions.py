"""The client's exception hierarchy and the one place that maps gRPC errors onto it.

The hierarchy is shallow on purpose (httpx `_exceptions.py` style): callers catch `AutoGLMError`
for "anything went wrong", or one subclass per status code of the contract
(proto/autoglm/v1/text_generation.proto, top of file) when they want to react to it:

    AutoGLMError
    ├── ConfigError             the client's own settings are unusable (no RPC was made)
    ├── InvalidArgumentError    INVALID_ARGUMENT (also raised before an RPC for malformed input)
    ├── NotFoundError           NOT_FOUND: unknown model
    ├── AuthenticationError     UNAUTHENTICATED: missing/unknown/expired token
    ├── PermissionDeniedError   PERMISSION_DENIED: token lacks scope or model
    ├── ResourceExhaustedError  RESOURCE_EXHAUSTED: a limit was hit; see `retry_after`
    ├── UnavailableError        UNAVAILABLE: engine not reachable/ready (also TLS failures)
    ├── DeadlineExceededError   DEADLINE_EXCEEDED
    ├── CancelledError          CANCELLED
    └── InternalError           INTERNAL: quote `request_id` to the operator

Codes the contract never uses (UNKNOWN, UNIMPLEMENTED, ...) become a plain `AutoGLMError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "AuthenticationError",
    "AutoGLMError",
    "CancelledError",
    "ConfigError",
    "DeadlineExceededError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnavailableError",
    "error_from_rpc",
    "map_exceptions",
]


class AutoGLMError(Exception):
    """Base of every error this client raises.

    Attributes:
        code: the gRPC status code, or None for errors raised by the client itself.
        message: the server's status message (it names the offending field or limit).
        request_id: the request id the server reported, to quote in a bug report.
        field_violations: (field, description) pairs from a `google.rpc.BadRequest` detail.
        retry_after: seconds to wait before retrying, from a `google.rpc.RetryInfo` detail.
        attempts: how many attempts the call made before this error was raised (the client
            retries UNAVAILABLE; see `RetryPolicy`).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        request_id: str | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        self.retry_after = retry_after
        self.attempts = attempts


class ConfigError(AutoGLMError):
    """The client's settings (profile file, environment, arguments) cannot be used."""


class InvalidArgumentError(AutoGLMError):
    """A request field is missing, malformed or out of range (see `field_violations`)."""


class NotFoundError(AutoGLMError):
    """The requested model is not served by this server."""


class AuthenticationError(AutoGLMError):
    """The bearer token is missing, malformed, unknown or expired."""


class PermissionDeniedError(AutoGLMError):
    """The token is valid but lacks the scope or model."""


class ResourceExhaustedError(AutoGLMError):
    """A concurrency, rate or length limit was hit; `retry_after` says when to retry, if known."""


class UnavailableError(AutoGLMError):
    """The server or its engine cannot be reached; safe to retry if nothing was received."""


class DeadlineExceededError(AutoGLMError):
    """The call's deadline passed; the server cancelled the engine request."""


class CancelledError(AutoGLMError):
    """The call was cancelled; the server cancelled the engine request."""


class InternalError(AutoGLMError):
    """A server fault; details are only in the server log, found by `request_id`."""


_BY_CODE: dict[grpc.StatusCode, type[AutoGLMError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
}

# The contract only promises that an INTERNAL message "carries a request id", so only INTERNAL
# messages are searched (an INVALID_ARGUMENT message *about* the field, "request_id must be ...",
# must not yield an id). Spellings accepted: the server's "internal error (request id abc)", and
# "request_id=abc", "request-id: 'abc'". The id alphabet is GenerateRequest.request_id's:
# 1..64 characters of [A-Za-z0-9._:-].
_REQUEST_ID_IN_MESSAGE = re.compile(
    r"request[ _-]?id\s*[=:]?\s*[\"']?([A-Za-z0-9._:-]{1,64})", re.IGNORECASE
)
_REQUEST_ID_METADATA_KEYS = ("x-request-id", "request-id")


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` from the trailers, or None if absent or inconsistent."""
    try:
        return rpc_status.from_call(error)
    except (ValueError, AttributeError, TypeError):
        # from_call raises ValueError when the proto disagrees with the call's code/message; a
        # hand-made RpcError may lack the grpc.Call methods. Either way: no rich details.
        return None


def _request_id(
    error: grpc.RpcError,
    code: grpc.StatusCode | None,
    message: str,
    status: status_pb2.Status | None,
) -> str | None:
    """The request id from RequestInfo, else a request-id trailer, else an INTERNAL message."""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            info = error_details_pb2.RequestInfo()
            detail.Unpack(info)
            if info.request_id:
                return info.request_id
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key.lower() in _REQUEST_ID_METADATA_KEYS and isinstance(value, str) and value:
            return value
    match = _REQUEST_ID_IN_MESSAGE.search(message) if code == grpc.StatusCode.INTERNAL else None
    if match is None:
        return None
    # A sentence may end right after the id ("... request_id=abc."): drop that punctuation.
    return match.group(1).rstrip(".:") or None


def _violations(status: status_pb2.Status | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


def _retry_after(status: status_pb2.Status | None) -> float | None:
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def error_from_rpc(error: grpc.RpcError) -> AutoGLMError:
    """The typed error for a failed call (`grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    message = (details_fn() if callable(details_fn) else None) or str(error)
    status = _rich_status(error)
    cls = _BY_CODE.get(code, AutoGLMError) if code is not None else AutoGLMError
    return cls(
        message,
        code=code,
        request_id=_request_id(error, code, message, status),
        field_violations=_violations(status),
        retry_after=_retry_after(status),
    )


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Turn a `grpc.RpcError` raised in the block into the matching `AutoGLMError`.

    A plain (sync) context manager on purpose: it works unchanged around `await` expressions
    (`with map_exceptions(): await stub.Generate(...)`), so sync and async clients share it.
    `asyncio.CancelledError` and `KeyboardInterrupt` are not RpcErrors and pass through.
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from exc
