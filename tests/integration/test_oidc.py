"""JWT bearer tokens of a real, certified OpenID provider (npm's oidc-provider, over HTTPS with
a test CA) through the real façade: real Triton, real TLS, real gRPC, and the OpenAI door.

The provider signs with keys this module makes and hands to it, so tokens it would never issue
(wrong issuer, audience, expired, not yet valid) are forged with its own private key: only the
claim under test is wrong. The façade refetches the JWKS at most every REFETCH_S (30 s in
production), so rotation is seen within seconds here.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jwt
from joserfc.jwk import ECKey

from autoglm.client import (
    AuthenticationError,
    Client,
    ClientConfig,
    PermissionDeniedError,
)
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.claims import parse_mapping
from autoglm.server.security.oidc import HttpsJwks, OidcConfig, OidcVerifier
from autoglm.server.settings import OidcSettings, Settings, TlsSettings
from tests.support.oidc_provider import Client as IdpClient
from tests.support.oidc_provider import OidcProvider

from .conftest import MODEL, Facade, FacadeThread, scrape
from .openai_sdk import sdk

pytestmark = pytest.mark.integration

AUDIENCE = "https://autoglm.test/api"
REFETCH_S = 1.0
BATCH = IdpClient("batch-jobs", "batch-secret-0123456789abcdef", groups=("llm-users",))
AUDITOR = IdpClient("audit-reader", "audit-secret-0123456789abcdef")
STRANGER = IdpClient("stranger", "stranger-secret-0123456789abcdef", groups=("marketing",))
MAPPING = """
principal_claim = "client_id"

[[rules]]
claim = "groups"
values = ["llm-users"]
roles = ["user"]

[[rules]]
claim = "scope"
values = ["llm:audit"]
roles = ["auditor"]
"""


def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key(
        "P-256", private=True, parameters={"kid": kid, "use": "sig", "alg": "ES256"}
    )


def private_jwks(*keys: ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=True) for k in keys]}


@pytest.fixture(scope="module")
def first_key() -> ECKey:
    return ec_key("key-2026-a")


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, first_key: ECKey) -> Iterator[OidcProvider]:
    idp = OidcProvider(
        tmp_path_factory.mktemp("idp"),
        jwks=private_jwks(first_key),
        audience=AUDIENCE,
        clients=[BATCH, AUDITOR, STRANGER],
    )
    idp.start()
    yield idp
    idp.stop()


@pytest.fixture(scope="module")
def oidc_facade(
    triton: TritonProcess,
    pki: DevPki,
    token_store: TokenStore,
    engine_link: EngineLink,
    model_dir: Path,
    provider: OidcProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Facade]:
    mapping = tmp_path_factory.mktemp("oidc") / "oidc.toml"
    mapping.write_text(MAPPING)
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir),),
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=token_store.path,
        oidc=OidcSettings(
            issuer=provider.issuer,
            audience=AUDIENCE,
            config=mapping,
            ca_file=provider.ca_file,
            refetch_interval_s=REFETCH_S,
        ),
        engine_link=engine_link,
        metrics_listen="127.0.0.1:0",
        openai_listen="127.0.0.1:0",
    )
    thread = FacadeThread(settings)
    try:
        yield Facade(thread.port, f"127.0.0.1:{thread.port}", thread, settings)
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def config(oidc_facade: Facade, pki: DevPki) -> ClientConfig:
    return ClientConfig(
        endpoint=oidc_facade.endpoint,
        ca_cert=pki.ca_cert,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        token="-",
        model=MODEL,
    )


def client(config: ClientConfig, token: str) -> Client:
    return Client(dataclasses.replace(config, token=token))


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def forge(key: ECKey, issuer: str, **overrides: Any) -> str:
    """A token signed with the provider's own key, as the provider would make it but for
    `overrides` (None removes a claim)."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": BATCH.client_id,
        "client_id": BATCH.client_id,
        "groups": ["llm-users"],
        "iat": now,
        "exp": now + 300,
        "jti": f"forged-{now}",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def refused(config: ClientConfig, token: str, match: str) -> None:
    with client(config, token) as c, pytest.raises(AuthenticationError, match=match) as err:
        c.list_models()
    assert token not in str(err.value)


def auth_failures(facade: Facade, reason: str) -> float:
    return scrape(facade.metrics_url, "autoglm_auth_failures", reason=reason)


def wait_until(ok: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


# ---- valid tokens --------------------------------------------------------------------------------


def test_provider_token_generates_over_grpc(
    provider: OidcProvider, config: ClientConfig, oidc_facade: Facade
) -> None:
    token = provider.token(BATCH)
    assert claims_of(token)["groups"] == ["llm-users"]  # the provider's claims, as issued
    with client(config, token) as c:
        assert [m.name for m in c.list_models()] == [MODEL]
        answer = c.generate("Hello", max_tokens=2, temperature=0)
        assert answer.text


def test_provider_token_on_the_openai_door(
    provider: OidcProvider, oidc_facade: Facade, pki: DevPki
) -> None:
    token = provider.token(BATCH)
    with sdk(oidc_facade, pki, token) as sdk_client:
        assert [m.id for m in sdk_client.models.list()] == [MODEL]
        reply = sdk_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.usage is not None and reply.usage.completion_tokens >= 1
    forged = forge(ec_key("never-published"), provider.issuer)
    with (
        sdk(oidc_facade, pki, forged) as sdk_client,
        pytest.raises(openai.AuthenticationError, match="kid"),
    ):
        sdk_client.models.list()


def test_roles_from_the_scope_claim_and_no_role(
    provider: OidcProvider, config: ClientConfig
) -> None:
    auditor = provider.token(AUDITOR, scope="llm:audit")
    with client(config, auditor) as c:
        assert [m.name for m in c.list_models()] == [MODEL]  # models:read
        with pytest.raises(PermissionDeniedError, match="'generate'"):
            c.generate("Hello", max_tokens=1)  # an auditor never generates
    stranger = provider.token(STRANGER)
    no_role = "no role maps from this token's claims"
    with client(config, stranger) as c, pytest.raises(PermissionDeniedError, match=no_role):
        c.list_models()


def test_local_tokens_still_work_beside_jwts(config: ClientConfig, token: str) -> None:
    with client(config, token) as c:
        assert [m.name for m in c.list_models()] == [MODEL]


def test_jwks_over_https_only_with_the_providers_ca(
    provider: OidcProvider, first_key: ECKey
) -> None:
    """Discovery and JWKS come over HTTPS verified against --oidc-ca: without it (the system's
    CAs only) no key is fetched and every JWT is refused."""
    config = OidcConfig(issuer=provider.issuer, audience=AUDIENCE, mapping=parse_mapping({}))
    untrusting = OidcVerifier(config, HttpsJwks(provider.issuer))
    asyncio.run(untrusting.start())
    assert untrusting.key_ids == frozenset()
    trusting = OidcVerifier(config, HttpsJwks(provider.issuer, ca_file=provider.ca_file))
    asyncio.run(trusting.start())
    assert trusting.key_ids == {first_key.kid}


# ---- refused tokens ------------------------------------------------------------------------------


def test_wrong_claims_forged_with_the_providers_key(
    provider: OidcProvider, first_key: ECKey, config: ClientConfig, oidc_facade: Facade
) -> None:
    now = int(time.time())
    issuer = provider.issuer
    cases = [
        ("jwt_issuer", "another issuer", forge(first_key, "https://evil.test")),
        ("jwt_audience", "another audience", forge(first_key, issuer, aud="https://other.test")),
        ("jwt_expired", "expired", forge(first_key, issuer, iat=now - 900, exp=now - 300)),
        ("jwt_not_yet_valid", "not valid yet", forge(first_key, issuer, nbf=now + 600)),
        ("jwt_claims", "required claim", forge(first_key, issuer, exp=None)),
    ]
    for reason, message, token in cases:
        before = auth_failures(oidc_facade, reason)
        refused(config, token, message)
        assert auth_failures(oidc_facade, reason) == before + 1, reason
    # The same key and claims, unchanged, pass: only the claim under test was wrong.
    with client(config, forge(first_key, issuer)) as c:
        assert [m.name for m in c.list_models()] == [MODEL]


def test_alg_none_and_hmac_with_the_public_key(
    provider: OidcProvider, first_key: ECKey, config: ClientConfig
) -> None:
    claims = claims_of(provider.token(BATCH))
    none = f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(claims)}."
    refused(config, none, "algorithm that is not allowed")
    # HS256 keyed with the public key the provider publishes (RFC 8725 §2.1).
    public_pem = first_key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'kid': first_key.kid, 'typ': 'at+jwt'})}.{b64(claims)}"
    mac = hmac.HMAC(public_pem, hashes.SHA256())
    mac.update(signing_input.encode())
    signature = base64.urlsafe_b64encode(mac.finalize()).rstrip(b"=").decode()
    refused(config, f"{signing_input}.{signature}", "algorithm that is not allowed")
    # A tampered payload under the provider's genuine signature.
    header, _, signature = provider.token(BATCH).split(".")
    tampered = f"{header}.{b64({**claims, 'groups': ['llm-admins']})}.{signature}"
    refused(config, tampered, "invalid JWT")


def test_unknown_kid_fails_closed(provider: OidcProvider, config: ClientConfig) -> None:
    refused(config, forge(ec_key("never-published"), provider.issuer), "kid")


# ---- key rotation and the provider down ----------------------------------------------------------


def test_key_rotation_then_provider_down(
    provider: OidcProvider, config: ClientConfig, caplog: pytest.LogCaptureFixture
) -> None:
    old_token = provider.token(BATCH)
    second_key = ec_key("key-2026-b")
    provider.restart(private_jwks(second_key))  # rotated: the old key is withdrawn
    new_token = provider.token(BATCH)
    assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "==="))["kid"] == (
        second_key.kid
    )

    def new_kid_accepted() -> bool:
        # A call with the unknown kid waits for a refetch, allowed once per REFETCH_S.
        with client(config, new_token) as c:
            try:
                return [m.name for m in c.list_models()] == [MODEL]
            except AuthenticationError:
                return False

    wait_until(new_kid_accepted, "tokens of the rotated key were never accepted")
    refused(config, old_token, "kid")  # the withdrawn key went with the refetch

    # The provider down: the cached key keeps working, a kid never fetched fails closed.
    provider.stop()
    unknown = forge(ec_key("key-2026-c"), provider.issuer)

    def refetch_failed() -> bool:
        # Every call is refused; once the interval has passed one of them refetches (and fails).
        refused(config, unknown, "kid")
        return any("JWKS fetch failed" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="autoglm.server.security.oidc"):
        wait_until(refetch_failed, "no JWKS refetch was tried with the provider down")
    refused(config, unknown, "kid")  # still refused after the failed refetch: fail closed
    with client(config, new_token) as c:
        answer = c.generate("Hello", max_tokens=1, temperature=0)
        assert answer.text is not None
    provider.restart(private_jwks(second_key))  # for whatever runs after this module
