"""The official `openai` SDK pointed at the façade's OpenAI-compatible front door (issue #21).

Shared by tests/integration/test_openai_*.py. The SDK is used as its users set it up: a
`base_url`, an `api_key` (the bearer token) and trust in the dev CA, here through
`http_client=openai.DefaultHttpxClient(verify=…)` (the SDK's own defaults otherwise); the
agent-style test in test_openai_api.py uses `SSL_CERT_FILE` instead. Retries are off
(`max_retries=0`): the SDK retries 408/429/5xx with back-off, which would hide a wrong status
and slow every refusal down.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx2
import openai

from autoglm.server.devstack.pki import DevPki

from .conftest import Facade

# The keys of OpenAI's error object, every one present (null when it does not apply).
ERROR_KEYS = {"message", "type", "param", "code"}


def base_url(facade: Facade) -> str:
    # `localhost`: the dev PKI's server certificate has the SANs localhost and 127.0.0.1.
    return f"https://localhost:{facade.thread.running.openai_port}/v1"


def ssl_context(pki: DevPki, *, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if client_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


def sdk(facade: Facade, pki: DevPki, token: str, **kwargs: Any) -> openai.OpenAI:
    """A sync client; `client_cert=True` presents the dev client certificate."""
    ctx = ssl_context(pki, client_cert=kwargs.pop("client_cert", False))
    return openai.OpenAI(
        base_url=base_url(facade),
        api_key=token,
        http_client=openai.DefaultHttpxClient(verify=ctx),
        max_retries=0,
        **kwargs,
    )


def async_sdk(facade: Facade, pki: DevPki, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url(facade),
        api_key=token,
        http_client=openai.DefaultAsyncHttpxClient(verify=ssl_context(pki)),
        max_retries=0,
    )


def raw(facade: Facade, pki: DevPki) -> httpx2.Client:
    """A plain HTTP client on the same front door, for what the SDK cannot send (bad JSON, no
    Authorization header, a chunked body)."""
    return httpx2.Client(base_url=base_url(facade), verify=ssl_context(pki), timeout=30)


def error_of(response: httpx2.Response) -> dict[str, Any]:
    """The `error` object of an error response, after checking OpenAI's shape:
    `{"error": {"message", "type", "param", "code"}}` and nothing else."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    return error


def sdk_error(exc: openai.APIStatusError) -> dict[str, Any]:
    """`error_of` for an error the SDK raised (checked on the raw response, not as the SDK
    re-read it)."""
    return error_of(exc.response)
