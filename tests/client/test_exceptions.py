"""gRPC errors -> typed errors, with rich details read from a real `grpc-status-details-bin`.

`FakeRpcError` is a test double of the error object a failed call raises: it has the
`grpc.Call` methods the mapping reads (`code`, `details`, `trailing_metadata`).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from autoglm.client import (
    AuthenticationError,
    AutoGLMError,
    CancelledError,
    ConfigError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
    map_exceptions,
)
from autoglm.client._exceptions import error_from_rpc


class FakeRpcError(grpc.RpcError):
    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(details)
        self._code, self._details, self._trailing = code, details, trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing


def _packed(*messages: object) -> list[any_pb2.Any]:
    out = []
    for message in messages:
        packed = any_pb2.Any()
        packed.Pack(message)
        out.append(packed)
    return out


def rich_error(code: grpc.StatusCode, message: str, *details: object) -> FakeRpcError:
    """An error carrying `google.rpc.Status` in trailers, as `grpc_status.rpc_status` sends it."""
    status = status_pb2.Status(code=code.value[0], message=message, details=_packed(*details))
    return FakeRpcError(code, message, (("grpc-status-details-bin", status.SerializeToString()),))


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, CancelledError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, AutoGLMError),
        (grpc.StatusCode.UNIMPLEMENTED, AutoGLMError),
    ],
)
def test_code_maps_to_class(code: grpc.StatusCode, cls: type[AutoGLMError]) -> None:
    error = error_from_rpc(FakeRpcError(code, "boom"))
    assert type(error) is cls
    assert error.code is code
    assert error.message == str(error) == "boom"
    assert error.field_violations == [] and error.retry_after is None


def test_hierarchy_is_shallow() -> None:
    for cls in (InvalidArgumentError, NotFoundError, ConfigError, InternalError, CancelledError):
        assert cls.__mro__[1] is AutoGLMError
    assert not issubclass(CancelledError, asyncio.CancelledError)


def test_bad_request_field_violations() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="sampling.temperature", description="must be in [0, 2], got 3"
            ),
            error_details_pb2.BadRequest.FieldViolation(field="model", description="required"),
        ]
    )
    error = error_from_rpc(
        rich_error(grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature: out of range", bad)
    )
    assert isinstance(error, InvalidArgumentError)
    assert error.field_violations == [
        ("sampling.temperature", "must be in [0, 2], got 3"),
        ("model", "required"),
    ]


def test_retry_info() -> None:
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.seconds, retry.retry_delay.nanos = 2, 500_000_000
    error = error_from_rpc(
        rich_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "concurrency limit 4 reached", retry)
    )
    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_after == pytest.approx(2.5)


def test_request_id_from_request_info_detail() -> None:
    info = error_details_pb2.RequestInfo(request_id="req-42")
    error = error_from_rpc(rich_error(grpc.StatusCode.INTERNAL, "internal error", info))
    assert error.request_id == "req-42"


@pytest.mark.parametrize(
    ("message", "request_id"),
    [
        ("internal error (request id 3f2a9c1e-77)", "3f2a9c1e-77"),  # the server's wording
        ("the engine failed to serve the request (request id r.1)", "r.1"),
        ("internal error (request_id=a1b2c3d4)", "a1b2c3d4"),
        ("internal error; quote Request-ID: 'abc:def' to the operator", "abc:def"),
        ("internal error, request id xyz.", "xyz"),
        ("engine not ready", None),
    ],
)
def test_request_id_from_internal_message(message: str, request_id: str | None) -> None:
    assert error_from_rpc(FakeRpcError(grpc.StatusCode.INTERNAL, message)).request_id == request_id


def test_request_id_not_parsed_from_other_codes() -> None:
    error = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "request_id: must be 1..64 characters")
    assert error_from_rpc(error).request_id is None


def test_request_id_from_trailer() -> None:
    error = FakeRpcError(grpc.StatusCode.INTERNAL, "oops", (("x-request-id", "trail-1"),))
    assert error_from_rpc(error).request_id == "trail-1"


def test_inconsistent_status_details_are_ignored() -> None:
    # grpc_status.from_call raises ValueError when the proto's code disagrees with the call's.
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="other")
    error = FakeRpcError(
        grpc.StatusCode.INTERNAL, "boom", (("grpc-status-details-bin", status.SerializeToString()),)
    )
    mapped = error_from_rpc(error)
    assert isinstance(mapped, InternalError) and mapped.field_violations == []


def test_bare_rpc_error_without_call_methods() -> None:
    mapped = error_from_rpc(grpc.RpcError("transport closed"))
    assert type(mapped) is AutoGLMError
    assert mapped.code is None and mapped.message == "transport closed"


def test_map_exceptions_chains_the_original() -> None:
    original = FakeRpcError(grpc.StatusCode.NOT_FOUND, "no model 'x'")
    with pytest.raises(NotFoundError) as info, map_exceptions():
        raise original
    assert info.value.__cause__ is original


def test_map_exceptions_passes_other_errors_through() -> None:
    with pytest.raises(KeyError), map_exceptions():
        raise KeyError("x")


async def test_map_exceptions_around_await() -> None:
    async def failing_call() -> None:
        raise rich_error(grpc.StatusCode.UNAUTHENTICATED, "token expired")

    with pytest.raises(AuthenticationError, match="token expired"), map_exceptions():
        await failing_call()


async def test_map_exceptions_lets_asyncio_cancellation_through() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError), map_exceptions():
        await cancelled()


def test_map_exceptions_with_real_aio_rpc_error() -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="bad",
        details=_packed(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field="prompt", description="x")
                ]
            )
        ),
    )
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    aio_error = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), trailing, details="bad"
    )
    with pytest.raises(InvalidArgumentError) as info, map_exceptions():
        raise aio_error
    assert info.value.field_violations == [("prompt", "x")]
