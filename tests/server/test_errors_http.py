"""http_error_for: each domain error → the HTTP status, OpenAI's error body and headers."""

from __future__ import annotations

import logging

import pytest

from autoglm.server.errors import (
    DeadlineExceeded,
    EngineFailure,
    EngineUnavailable,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RequestTooLarge,
    ResourceExhausted,
    Unauthenticated,
    http_error_for,
)
from autoglm.server.security.shared_limits import LimitsUnavailable

RID = "req-7"


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InvalidArgument([("sampling.top_p", "must be in (0, 1]")]), 400, "invalid_request_error"),
        (Unauthenticated("missing bearer token"), 401, "authentication_error"),
        (PermissionDenied("nope"), 403, "permission_error"),
        (NotFound("model: no model named 'x'", field="model"), 404, "invalid_request_error"),
        (RequestTooLarge("body: too big"), 413, "invalid_request_error"),
        (ResourceExhausted("slow down", retry_after_s=0.2), 429, "rate_limit_error"),
        (EngineUnavailable("triton down"), 503, "service_unavailable"),
        (DeadlineExceeded("late"), 504, "timeout"),
        (EngineFailure("boom"), 500, "server_error"),
        (RuntimeError("unexpected"), 500, "server_error"),
    ],
)
def test_status_and_type(exc: BaseException, status: int, kind: str) -> None:
    got, body, _ = http_error_for(exc, request_id=RID)
    assert got == status
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind


def test_invalid_argument_names_the_callers_field() -> None:
    exc = InvalidArgument([("sampling.max_tokens", "must be <= 64"), ("prompt", "required")])
    rename = {"sampling.max_tokens": "max_tokens", "prompt": "messages"}.__getitem__
    _, body, _ = http_error_for(exc, request_id=RID, param_names=rename)
    error = body["error"]
    assert isinstance(error, dict)
    assert error["param"] == "max_tokens"
    assert error["message"] == "max_tokens: must be <= 64; messages: required"


def test_not_found_names_the_model_field() -> None:
    _, body, _ = http_error_for(NotFound("model: no such", field="model"), request_id=RID)
    assert body["error"] == {
        "message": "model: no such",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize(("after", "header"), [(0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_is_whole_seconds_rounded_up(after: float, header: str) -> None:
    _, _, headers = http_error_for(ResourceExhausted("x", retry_after_s=after), request_id=RID)
    assert headers == {"retry-after": header}


def test_an_unreachable_limits_store_says_when_to_retry() -> None:
    exc = LimitsUnavailable("limits store unreachable", retry_after_s=1.5)
    status, body, headers = http_error_for(exc, request_id=RID)
    assert (status, headers) == (503, {"retry-after": "2"})
    assert body["error"]["type"] == "service_unavailable"  # type: ignore[index]
    # An engine that is down says nothing of when it comes back: no header.
    assert http_error_for(EngineUnavailable("down"), request_id=RID)[2] == {}


def test_too_large_is_413_not_429() -> None:
    status, body, headers = http_error_for(RequestTooLarge("body: big"), request_id=RID)
    assert (status, headers) == (413, {})
    assert body["error"]["code"] == "request_too_large"  # type: ignore[index]


def test_unauthenticated_asks_for_a_bearer_token() -> None:
    _, body, headers = http_error_for(Unauthenticated("missing"), request_id=RID)
    assert headers == {"www-authenticate": "Bearer"}
    assert body["error"]["code"] == "invalid_api_key"  # type: ignore[index]


def test_engine_and_unexpected_errors_tell_only_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        for exc in (EngineFailure("secret detail"), RuntimeError("secret detail")):
            _, body, _ = http_error_for(exc, request_id=RID)
            message = body["error"]["message"]  # type: ignore[index]
            assert "secret" not in message
            assert RID in message
    assert "secret detail" in caplog.text  # the operator still sees it
