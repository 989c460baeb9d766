"""TLS and client certificates on the OpenAI-compatible front door (issue #21): the SDK trusts
the private CA or does not connect; a client certificate is verified when presented (and
required with `openai_require_client_cert`); a token bound to a certificate works only over a
connection presenting it; plaintext HTTP never reaches the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from autoglm.server.devstack.pki import CLIENT_AUTH, DevPki, client_spiffe_id, issue_certificate
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.files import write_atomic
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings import Settings, TlsSettings

from .conftest import MODEL, Facade, FacadeThread
from .openai_sdk import base_url, sdk, sdk_error, ssl_context

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


def _one_token(client: openai.OpenAI) -> int:
    done = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)  # type: ignore[arg-type]
    assert done.usage is not None
    return done.usage.completion_tokens


def _causes(exc: BaseException) -> str:
    """The exception and everything it was raised from, as one string."""
    parts = []
    node: BaseException | None = exc
    while node is not None:
        parts.append(repr(node))
        node = node.__cause__ or node.__context__
    return " <- ".join(parts)


def test_sdk_without_the_ca_does_not_connect(
    facade: Facade, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK's own HTTP client, as users get it: the system's trust store only.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    client = openai.OpenAI(base_url=base_url(facade), api_key=token, max_retries=0)
    with client, pytest.raises(openai.APIConnectionError) as err:
        client.models.list()
    assert "CERTIFICATE_VERIFY_FAILED" in _causes(err.value)


def test_sdk_trusts_the_ca_through_ssl_cert_file(
    facade: Facade, pki: DevPki, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the README tells users: SSL_CERT_FILE, read when the SDK builds its client.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
    with openai.OpenAI(base_url=base_url(facade), api_key=token, max_retries=0) as client:
        assert MODEL in [m.id for m in client.models.list()]


def test_plaintext_http_to_the_tls_port_fails(facade: Facade, pki: DevPki, token: str) -> None:
    plain = base_url(facade).replace("https://", "http://")
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{plain}/models", headers={"authorization": f"Bearer {token}"}, timeout=10)
    client = openai.OpenAI(base_url=plain, api_key=token, max_retries=0)
    with client, pytest.raises(openai.APIConnectionError):
        client.models.list()
    with sdk(facade, pki, token) as client:  # the port still serves TLS afterwards
        assert _one_token(client) == 1


def test_client_certificate_is_accepted_when_presented(
    facade: Facade, pki: DevPki, token: str
) -> None:
    with sdk(facade, pki, token, client_cert=True) as client:
        assert MODEL in [m.id for m in client.models.list()]
        assert _one_token(client) == 1


def test_client_certificate_from_a_foreign_ca_is_refused(
    facade: Facade, pki: DevPki, token: str, tmp_path: Path
) -> None:
    foreign_ca = issue_certificate("foreign CA", is_ca=True)
    intruder = issue_certificate("intruder", issuer=foreign_ca, extended_key_usages=[CLIENT_AUTH])
    write_atomic(tmp_path / "intruder.pem", intruder.cert_pem(), mode=0o644)
    write_atomic(tmp_path / "intruder-key.pem", intruder.key_pem(), mode=0o600)
    ctx = ssl_context(pki)
    ctx.load_cert_chain(tmp_path / "intruder.pem", tmp_path / "intruder-key.pem")
    client = openai.OpenAI(
        base_url=base_url(facade),
        api_key=token,
        http_client=openai.DefaultHttpxClient(verify=ctx),
        max_retries=0,
    )
    with client, pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_token_bound_to_a_certificate(facade: Facade, pki: DevPki, token_store: TokenStore) -> None:
    scopes = ["generate", "models:read"]
    mine, _ = token_store.create(
        "openai-bound-ok", scopes, bound_identity=client_spiffe_id(pki.client_name)
    )
    theirs, _ = token_store.create(
        "openai-bound-other", scopes, bound_identity=client_spiffe_id("someone-else")
    )
    with sdk(facade, pki, mine, client_cert=True) as client:
        _wait_known(client)
        assert _one_token(client) == 1
    for secret, with_cert in ((mine, False), (theirs, True)):
        with sdk(facade, pki, secret, client_cert=with_cert) as client:
            for call in (lambda: _one_token(client), client.models.list):
                with pytest.raises(openai.AuthenticationError) as err:
                    call()
                assert "bound to another client certificate" in sdk_error(err.value)["message"]


def _wait_known(client: openai.OpenAI) -> None:
    """The façade re-reads the token file at most every 0.5 s: a new token is "unknown" until
    then."""
    deadline = time.monotonic() + 10
    while True:
        try:
            client.models.list()
            return
        except openai.AuthenticationError as exc:
            assert "unknown" in str(exc) and time.monotonic() < deadline, exc
            time.sleep(0.05)


@pytest.fixture(scope="module")
def strict(
    triton: TritonProcess,
    pki: DevPki,
    token_store: TokenStore,
    engine_link: EngineLink,
    model_dir: Path,
) -> Iterator[Facade]:
    """A façade whose OpenAI front door requires client certificates."""
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir),),
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=token_store.path,
        engine_link=engine_link,
        metrics_listen=None,
        openai_listen="127.0.0.1:0",
        openai_require_client_cert=True,
    )
    thread = FacadeThread(settings)
    try:
        yield Facade(thread.port, f"127.0.0.1:{thread.port}", thread, settings)
    finally:
        thread.stop()


def test_required_client_certificate(strict: Facade, pki: DevPki, token: str) -> None:
    # TLS 1.3: the server's refusal arrives after the client's side of the handshake, as the
    # connection's first read fails.
    with sdk(strict, pki, token) as client, pytest.raises(openai.APIConnectionError):
        client.models.list()
    with sdk(strict, pki, token, client_cert=True) as client:
        assert _one_token(client) == 1
