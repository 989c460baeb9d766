"""status_for: each domain error → its gRPC code and rich details; anything else → INTERNAL."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from autoglm.server.errors import (
    DeadlineExceeded,
    EngineFailure,
    EngineUnavailable,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    status_for,
)

RID = "req-42"
DETAILS_KEY = "grpc-status-details-bin"


def rich_status(status: grpc.Status) -> status_pb2.Status:
    """The google.rpc.Status carried in the trailing metadata (what the client decodes)."""
    metadata = dict(status.trailing_metadata)
    assert set(metadata) == {DETAILS_KEY}
    rich = status_pb2.Status.FromString(metadata[DETAILS_KEY])
    # The binary details must agree with the plain status grpc sends.
    assert rich.code == status.code.value[0]
    assert rich.message == status.details
    return rich


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFound("model 'x' is not served"), grpc.StatusCode.NOT_FOUND),
        (Unauthenticated("missing bearer token"), grpc.StatusCode.UNAUTHENTICATED),
        (PermissionDenied("token lacks scope generate"), grpc.StatusCode.PERMISSION_DENIED),
        (ResourceExhausted("too many requests"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceeded("deadline passed"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (EngineUnavailable("triton not ready"), grpc.StatusCode.UNAVAILABLE),
        (InvalidArgument([("model", "required")]), grpc.StatusCode.INVALID_ARGUMENT),
        (ServiceError("generic"), grpc.StatusCode.INTERNAL),
    ],
)
def test_service_error_code_and_message(exc: ServiceError, code: grpc.StatusCode) -> None:
    status = status_for(exc, request_id=RID)
    assert status.code == code
    assert status.details == exc.message
    rich_status(status)


@pytest.mark.parametrize(
    "exc",
    [
        NotFound("nf"),
        Unauthenticated("u"),
        PermissionDenied("p"),
        DeadlineExceeded("d"),
        EngineUnavailable("e"),
        ResourceExhausted("r"),
    ],
)
def test_plain_errors_have_no_details(exc: ServiceError) -> None:
    assert list(rich_status(status_for(exc, request_id=RID)).details) == []


def test_invalid_argument_details_are_a_bad_request() -> None:
    violations = [("model", "required"), ("sampling.top_k", "must be in [0, 1000], got -1")]
    status = status_for(InvalidArgument(violations), request_id=RID)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "model: required; sampling.top_k: must be in [0, 1000], got -1"
    [detail] = rich_status(status).details
    assert detail.Is(error_details_pb2.BadRequest.DESCRIPTOR)
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == violations


def test_invalid_argument_keeps_unicode_descriptions() -> None:
    status = status_for(InvalidArgument([("prompt", "trop long: é 你好")]), request_id=RID)
    [detail] = rich_status(status).details
    bad = error_details_pb2.BadRequest()
    detail.Unpack(bad)
    assert bad.field_violations[0].description == "trop long: é 你好"


@pytest.mark.parametrize(
    ("seconds", "expected"), [(1.5, (1, 500_000_000)), (0.25, (0, 250_000_000)), (30, (30, 0))]
)
def test_resource_exhausted_retry_info(seconds: float, expected: tuple[int, int]) -> None:
    exc = ResourceExhausted("concurrency limit reached", retry_after_s=seconds)
    status = status_for(exc, request_id=RID)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details == "concurrency limit reached"
    [detail] = rich_status(status).details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == expected


def test_resource_exhausted_zero_retry_is_still_sent() -> None:
    # 0 s is a meaningful "retry now", distinct from "don't know" (None).
    status = status_for(ResourceExhausted("busy", retry_after_s=0.0), request_id=RID)
    [detail] = rich_status(status).details
    assert detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR)


def test_engine_failure_hides_engine_text(caplog: pytest.LogCaptureFixture) -> None:
    secret = "CUDA OOM at /opt/secret/path/model.py:123 token=abc"
    with caplog.at_level(logging.ERROR, logger="autoglm.server.errors"):
        status = status_for(EngineFailure(secret), request_id=RID)
    assert status.code == grpc.StatusCode.INTERNAL
    assert RID in status.details
    assert secret not in status.details
    assert "CUDA" not in status.details
    rich = rich_status(status)
    assert secret.encode() not in rich.SerializeToString()
    assert list(rich.details) == []
    # The engine's text goes to the log only.
    assert any(secret in r.getMessage() and RID in r.getMessage() for r in caplog.records)


class _Boom(RuntimeError):
    pass


def test_unexpected_exception_is_internal_with_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise _Boom("password=hunter2 in /etc/secret")
    except _Boom as exc:
        with caplog.at_level(logging.ERROR, logger="autoglm.server.errors"):
            status = status_for(exc, request_id=RID)
    assert status.code == grpc.StatusCode.INTERNAL
    assert RID in status.details
    assert "hunter2" not in status.details
    assert "_Boom" not in status.details
    rich = rich_status(status)
    assert rich.code == code_pb2.INTERNAL
    assert list(rich.details) == []
    assert b"hunter2" not in rich.SerializeToString()
    # The traceback is logged, with the request id.
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.levelno == logging.ERROR
    assert RID in record.getMessage()
    assert record.exc_info[0] is _Boom
    assert "hunter2" in caplog.text
    assert "Traceback" in caplog.text


@pytest.mark.parametrize("exc", [KeyError("k"), ValueError("v"), TypeError("t"), Exception()])
def test_any_non_service_error_is_internal(exc: Exception) -> None:
    status = status_for(exc, request_id=RID)
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == f"internal error (request id {RID})"


def test_status_codes_match_google_rpc_numbers() -> None:
    # grpc.StatusCode and google.rpc.Code must agree, since the rich status carries the number.
    for exc, number in [
        (InvalidArgument([("a", "b")]), code_pb2.INVALID_ARGUMENT),
        (NotFound("x"), code_pb2.NOT_FOUND),
        (EngineUnavailable("x"), code_pb2.UNAVAILABLE),
        (ResourceExhausted("x"), code_pb2.RESOURCE_EXHAUSTED),
    ]:
        assert rich_status(status_for(exc, request_id=RID)).code == number
