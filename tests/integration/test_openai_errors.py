"""Every error of the OpenAI-compatible front door (issue #21), in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`: 400, 401, 403, 404, 413, 429 and 503, and
no 5xx for anything a caller sends (the SDK retries 5xx).

413 and 503 use a façade of this module's own: a 4 KiB body limit, and an engine address
nobody listens on (a closed port: the engine is unavailable, nothing has to be killed).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from autoglm.server.devstack.pki import DevPki
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.limits import PrincipalLimits
from autoglm.server.settings import Settings, TlsSettings

from .conftest import MODEL, VLM, Facade, FacadeThread
from .openai_sdk import error_of, raw, sdk, sdk_error, ssl_context

pytestmark = pytest.mark.integration

CHAT = "/chat/completions"
COMPLETIONS = "/completions"
HI = [{"role": "user", "content": "hi"}]


def _chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, "max_tokens": 1, **fields}


@pytest.fixture(scope="module")
def http(facade: Facade, pki: DevPki) -> Iterator[httpx2.Client]:
    with raw(facade, pki) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- 400 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"\xff\xfe{}", "body"),
        (b"[]", "body"),
        (b'{"model":"x","messages":' + b"[" * 5000 + b"]" * 5000 + b"}", "body"),
    ],
    ids=["not-json", "empty", "not-utf8", "not-an-object", "nested-5000-deep"],
)
def test_bad_json_body_is_400(http: httpx2.Client, token: str, body: bytes, param: str) -> None:
    response = http.post(CHAT, content=body, headers=_bearer(token))
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_validation_error_names_the_field(oai_sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai_sdk.chat.completions.create(
            model=MODEL,
            messages=HI,  # type: ignore[arg-type]
            max_tokens="ten",  # type: ignore[arg-type]
        )
    error = sdk_error(err.value)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "max_tokens",
        None,
    )
    assert "max_tokens" in error["message"]


# Bodies an outside caller can send: each is that caller's mistake, so a 400 naming the field,
# never a 5xx (which the SDK would retry, twice by default).
def _overflow(path: str, body: dict[str, Any], param: str) -> Any:
    """A JSON integer beyond autoglm.v1's field (int32, uint64): still the caller's 400."""
    return pytest.param(path, body, param)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": 5, "messages": "hi"}, "model"),
        (CHAT, {"model": MODEL, "messages": []}, "messages"),
        (CHAT, {"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
        (
            CHAT,
            {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
            "messages[0].role",
        ),
        (
            CHAT,
            _chat_body(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
            "messages[0].content[0].type",
        ),
        # Over SmolLM2's 8192-token context (its config.json).
        (CHAT, _chat_body(messages=[{"role": "user", "content": "hi " * 9000}]), "messages"),
        (CHAT, _chat_body(max_tokens=5000), "max_tokens"),
        (CHAT, _chat_body(max_tokens=-(2**70)), "max_tokens"),
        (CHAT, _chat_body(temperature=1e300), "temperature"),
        (CHAT, _chat_body(frequency_penalty=-1e39), "frequency_penalty"),
        (CHAT, _chat_body(seed=-1), "seed"),
        (CHAT, _chat_body(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (CHAT, _chat_body(logit_bias={"1": 5}), "logit_bias"),
        (CHAT, _chat_body(tools=[{"type": "function"}]), "tools"),
        (CHAT, _chat_body(response_format={"type": "json_object"}), "response_format"),
        (
            CHAT,
            _chat_body(messages=[{"role": "user", "content": "hi", "name": "x"}]),
            "messages[0].name",
        ),
        (COMPLETIONS, {"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
        (COMPLETIONS, {"model": MODEL, "prompt": "a", "echo": True}, "echo"),
        (COMPLETIONS, {"model": MODEL, "prompt": "a", "best_of": 3}, "best_of"),
        _overflow(CHAT, _chat_body(max_tokens=10**30), "max_tokens"),
        _overflow(
            CHAT,
            {"model": MODEL, "messages": HI, "max_completion_tokens": 2**70},
            "max_completion_tokens",
        ),
        _overflow(CHAT, _chat_body(top_k=2**40), "top_k"),
        _overflow(CHAT, _chat_body(seed=2**70), "seed"),
        _overflow(COMPLETIONS, {"model": MODEL, "prompt": "a", "max_tokens": 2**64}, "max_tokens"),
    ],
)
def test_bad_input_is_400_never_5xx(
    http: httpx2.Client, token: str, path: str, body: dict[str, Any], param: str
) -> None:
    response = http.post(path, json=body, headers=_bearer(token))
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error


def test_bad_request_id_header_is_400(http: httpx2.Client, token: str) -> None:
    headers = {**_bearer(token), "x-request-id": "not a valid id!"}
    response = http.post(CHAT, json=_chat_body(), headers=headers)
    assert response.status_code == 400
    assert error_of(response)["param"] == "x-request-id"


# --- 401 / 403 / 404 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    reader: str  # models:read only
    generator: str  # generate only
    other_model: str  # may use "m2" only
    one_per_minute: str
    four_tokens: str  # max_tokens_per_request 4


@pytest.fixture(scope="module")
def tokens(http: httpx2.Client, token_store: TokenStore) -> Tokens:
    read = ["models:read"]
    both = ["generate", "models:read"]
    made = Tokens(
        reader=token_store.create("openai-reader", read)[0],
        generator=token_store.create("openai-generator", ["generate"])[0],
        other_model=token_store.create("openai-other-model", both, models=["m2"])[0],
        one_per_minute=token_store.create(
            "openai-one-per-minute", both, limits=PrincipalLimits(requests_per_minute=1)
        )[0],
        four_tokens=token_store.create(
            "openai-four-tokens", both, limits=PrincipalLimits(max_tokens_per_request=4)
        )[0],
    )
    # The façade re-reads the token file at most every 0.5 s: until then these are "unknown".
    deadline = time.monotonic() + 10
    while http.get("/models", headers=_bearer(made.four_tokens)).status_code == 401:
        assert time.monotonic() < deadline, "the façade never loaded the new tokens"
        time.sleep(0.05)
    return made


@pytest.fixture(scope="module")
def oai_sdk(facade: Facade, pki: DevPki, token: str) -> Iterator[openai.OpenAI]:
    with sdk(facade, pki, token) as client:
        yield client


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer sk-not-a-token",
        "Bearer agm_" + "0" * 12 + "_" + "a" * 43,
    ],
    ids=["missing", "empty", "basic", "bad", "unknown"],
)
@pytest.mark.parametrize("route", ["GET /models", "POST /chat/completions"])
def test_missing_or_bad_key_is_401(
    http: httpx2.Client, route: str, authorization: str | None
) -> None:
    method, path = route.split()
    headers = {"authorization": authorization} if authorization else {}
    response = http.request(method, path, json=_chat_body(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = error_of(response)
    assert (error["type"], error["code"], error["param"]) == (
        "authentication_error",
        "invalid_api_key",
        None,
    )


def test_bad_key_through_the_sdk(facade: Facade, pki: DevPki) -> None:
    with sdk(facade, pki, "sk-not-a-token") as client:
        with pytest.raises(openai.AuthenticationError) as err:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)  # type: ignore[arg-type]
        assert sdk_error(err.value)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_missing_scope_is_403(facade: Facade, pki: DevPki, tokens: Tokens) -> None:
    with sdk(facade, pki, tokens.reader) as reader:
        assert sorted(m.id for m in reader.models.list()) == sorted([MODEL, VLM])
        for stream in (False, True):
            with pytest.raises(openai.PermissionDeniedError) as err:
                reader.chat.completions.create(
                    model=MODEL,
                    messages=HI,
                    max_tokens=1,
                    stream=stream,  # type: ignore[arg-type]
                )
            error = sdk_error(err.value)
            assert error["type"] == "permission_error" and "'generate'" in error["message"]
    with sdk(facade, pki, tokens.generator) as generator:
        with pytest.raises(openai.PermissionDeniedError) as err:
            generator.models.list()
        assert "'models:read'" in sdk_error(err.value)["message"]
        done = generator.completions.create(model=MODEL, prompt="hi", max_tokens=1)
        assert done.usage is not None and done.usage.completion_tokens == 1


def test_model_allow_list(facade: Facade, pki: DevPki, tokens: Tokens) -> None:
    with sdk(facade, pki, tokens.other_model) as client:
        assert client.models.list().data == []  # only the models this token may use
        # The same answer as for a model that does not exist: no probing of other models.
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(MODEL)
        with pytest.raises(openai.PermissionDeniedError) as err:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)  # type: ignore[arg-type]
        error = sdk_error(err.value)
        assert (error["type"], error["param"]) == ("permission_error", "model")
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model=MODEL, prompt="hi", max_tokens=1, stream=True)


def test_unknown_model_is_404(oai_sdk: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as err:
            oai_sdk.chat.completions.create(
                model="no-such-model",
                messages=HI,
                max_tokens=1,
                stream=stream,  # type: ignore[arg-type]
            )
        error = sdk_error(err.value)
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            "model",
            "model_not_found",
        )
        assert "no-such-model" in error["message"]
    with pytest.raises(openai.NotFoundError) as err:
        oai_sdk.completions.create(model="no-such-model", prompt="hi", max_tokens=1)
    assert sdk_error(err.value)["code"] == "model_not_found"


# --- 429 ------------------------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(facade: Facade, pki: DevPki, tokens: Tokens) -> None:
    with sdk(facade, pki, tokens.one_per_minute) as client:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)  # type: ignore[arg-type]
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as err:
                client.chat.completions.create(
                    model=MODEL,
                    messages=HI,
                    max_tokens=1,
                    stream=stream,  # type: ignore[arg-type]
                )
            assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
            error = sdk_error(err.value)
            assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
            assert "rate" in error["message"]


def test_per_request_token_limit_is_429(facade: Facade, pki: DevPki, tokens: Tokens) -> None:
    with sdk(facade, pki, tokens.four_tokens) as client:
        done = client.completions.create(model=MODEL, prompt="hi", max_tokens=4)
        assert done.usage is not None and done.usage.completion_tokens <= 4
        with pytest.raises(openai.RateLimitError) as err:
            client.completions.create(model=MODEL, prompt="hi", max_tokens=8)
        error = sdk_error(err.value)
        assert error["type"] == "rate_limit_error" and "max_tokens" in error["message"]


# --- 413 and 503: a façade of this module's own ---------------------------------------------------

LIMIT = 4096


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def small(
    pki: DevPki,
    token_store: TokenStore,
    engine_link: EngineLink,
    model_dir: Path,
    facade: Facade,
) -> Iterator[Facade]:
    """A 4 KiB body limit, and an engine that is not there."""
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=f"127.0.0.1:{_closed_port()}",
        models=(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir),),
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=token_store.path,
        engine_link=engine_link,
        health_interval_s=0.25,
        metrics_listen=None,
        openai_listen="127.0.0.1:0",
        openai_max_body_bytes=LIMIT,
    )
    thread = FacadeThread(settings)
    try:
        yield Facade(thread.port, f"127.0.0.1:{thread.port}", thread, settings)
    finally:
        thread.stop()


def test_body_over_the_limit_is_413(small: Facade, pki: DevPki, token: str) -> None:
    with sdk(small, pki, token) as client, pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x" * (LIMIT + 1)}],
            max_tokens=1,
        )
    assert err.value.status_code == 413
    error = sdk_error(err.value)
    assert error["type"] == "invalid_request_error" and str(LIMIT) in error["message"]
    # Without a Content-Length (chunked), the limit holds as the body is read.
    with raw(small, pki) as http:
        chunks = (b"x" * 1000 for _ in range(10))
        response = http.post(CHAT, content=chunks, headers=_bearer(token))
    assert response.status_code == 413
    assert str(LIMIT) in error_of(response)["message"]


def test_413_is_not_labelled_a_rate_limit(small: Facade, pki: DevPki, token: str) -> None:
    with raw(small, pki) as http:
        response = http.post(CHAT, content=b"x" * (LIMIT + 1), headers=_bearer(token))
    assert response.status_code == 413
    assert error_of(response)["code"] != "rate_limit_exceeded"


def test_engine_unavailable_is_503(small: Facade, pki: DevPki, token: str) -> None:
    with sdk(small, pki, token) as client:
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(
                    model=MODEL,
                    messages=HI,
                    max_tokens=1,
                    stream=stream,  # type: ignore[arg-type]
                )
            assert err.value.status_code == 503
            assert sdk_error(err.value)["type"] == "service_unavailable"
    # Readiness says so too; liveness does not (the process is fine).
    url = f"https://localhost:{small.thread.running.openai_port}"
    with httpx2.Client(base_url=url, verify=ssl_context(pki)) as probe:
        assert probe.get("/readyz").status_code == 503
        assert probe.get("/healthz").json() == {"status": "alive"}


def test_probes_of_the_package_facade(facade: Facade, pki: DevPki) -> None:
    # /healthz and /readyz sit beside /v1 and take no credentials (Kubernetes probes).
    url = f"https://localhost:{facade.thread.running.openai_port}"
    with httpx2.Client(base_url=url, verify=ssl_context(pki)) as probe:
        assert probe.get("/healthz").json() == {"status": "alive"}
        deadline = time.monotonic() + 10
        while (ready := probe.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.05)
    assert ready.json() == {"status": "ready"}
