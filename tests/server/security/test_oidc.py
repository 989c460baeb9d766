"""OIDC JWT validation rules, with keys made in-process by joserfc (no network: the JWKS comes
from a function; tests/integration/test_oidc.py runs the same against a real OpenID provider)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from autoglm.server.security.bearer_tokens import AuthError, TokenStore
from autoglm.server.security.claims import parse_mapping
from autoglm.server.security.credentials import Credentials
from autoglm.server.security.oidc import OidcConfig, OidcVerifier, looks_like_jwt

ISSUER = "https://idp.example.test/realms/llm"
AUDIENCE = "autoglm"
NOW = 1_800_000_000
MAPPING = parse_mapping(
    {
        "principal_claim": "preferred_username",
        "rules": [
            {"claim": "groups", "values": ["llm-users"], "roles": ["user"]},
            {"claim": "scope", "values": ["llm:audit"], "roles": ["auditor"], "models": ["m1"]},
        ],
    }
)


class Jwks:
    """The provider's published keys; counts fetches; `down` makes fetches fail."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise OSError("connection refused")
        return {"keys": [k.as_dict(private=False) for k in self.keys]}


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", private=True, parameters={"kid": kid, "use": "sig"})


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "0f1e",
        "preferred_username": "ana",
        "groups": ["llm-users"],
        "iat": NOW - 10,
        "exp": NOW + 300,
        "jti": "tok-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, alg: str = "ES256", **overrides: Any) -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, claims(**overrides), key, algorithms=[alg])


def verifier(jwks: Jwks, clock: Clock | None = None, **config: Any) -> OidcVerifier:
    monotonic = Clock()
    v = OidcVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, mapping=MAPPING, **config),
        jwks,
        clock=clock or Clock(),
        monotonic=monotonic,
    )
    v.monotonic = monotonic  # type: ignore[attr-defined]  # the tests move it
    asyncio.run(v.start())
    return v


def reason(v: OidcVerifier, token: str) -> str:
    with pytest.raises(AuthError) as err:
        v.verify(token)
    return err.value.reason


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# ---- valid tokens and claim mapping ------------------------------------------------------------


def test_a_valid_token_maps_to_principal_roles_and_scopes() -> None:
    key = ec_key("k1")
    record = verifier(Jwks(key)).verify(sign(key))
    assert record.principal == "ana"
    assert record.roles == {"user"}
    assert record.scopes == {"generate", "models:read"}
    assert record.models == frozenset()  # the matching rule names no models: all
    assert record.id == "jwt:tok-1"
    assert record.expires_at is not None and record.expires_at.timestamp() == NOW + 300


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (RSAKey.generate_key(2048, private=True, parameters={"kid": "r"}), "RS256"),
        (RSAKey.generate_key(2048, private=True, parameters={"kid": "p"}), "PS256"),
        (ECKey.generate_key("P-384", private=True, parameters={"kid": "e"}), "ES384"),
        (OKPKey.generate_key("Ed25519", private=True, parameters={"kid": "o"}), "Ed25519"),
    ],
)
def test_every_allowed_asymmetric_algorithm(key: Any, alg: str) -> None:
    assert verifier(Jwks(key)).verify(sign(key, alg)).principal == "ana"


def test_scope_claim_values_map_roles_and_models() -> None:
    key = ec_key("k1")
    record = verifier(Jwks(key)).verify(sign(key, groups=None, scope="openid llm:audit"))
    assert record.roles == {"auditor"}
    assert record.scopes == {"audit:read", "models:read"}
    assert record.models == {"m1"}


def test_no_role_maps_from_the_claims() -> None:
    """Valid, but the mapping grants nothing: a record without scopes (auth.py answers
    PERMISSION_DENIED "no role maps from this token's claims")."""
    key = ec_key("k1")
    record = verifier(Jwks(key)).verify(sign(key, groups=["others"]))
    assert record.roles == frozenset() and record.scopes == frozenset()


def test_token_id_without_jti_is_a_hash_prefix_never_the_token() -> None:
    key = ec_key("k1")
    token = sign(key, jti=None)
    record = verifier(Jwks(key)).verify(token)
    assert record.id.startswith("jwt:sha256:") and len(record.id) == len("jwt:sha256:") + 16
    assert record.id.split(":")[-1] not in token


def test_missing_principal_claim() -> None:
    key = ec_key("k1")
    assert reason(verifier(Jwks(key)), sign(key, preferred_username=None)) == "jwt_claims"


# ---- issuer, audience, time ------------------------------------------------------------------


def test_wrong_issuer() -> None:
    key = ec_key("k1")
    assert reason(verifier(Jwks(key)), sign(key, iss="https://evil.test")) == "jwt_issuer"


def test_wrong_audience() -> None:
    key = ec_key("k1")
    v = verifier(Jwks(key))
    assert reason(v, sign(key, aud="another-service")) == "jwt_audience"
    assert reason(v, sign(key, aud=["a", "b"])) == "jwt_audience"
    assert v.verify(sign(key, aud=["a", AUDIENCE])).principal == "ana"  # one of several


def test_missing_aud_iss_or_exp() -> None:
    key = ec_key("k1")
    v = verifier(Jwks(key))
    for claim in ("aud", "iss", "exp"):
        assert reason(v, sign(key, **{claim: None})) == "jwt_claims", claim


def test_expired_with_skew_boundary() -> None:
    key = ec_key("k1")
    clock = Clock()
    v = verifier(Jwks(key), clock, clock_skew_s=60)
    token = sign(key, exp=NOW)
    clock.now = NOW + 59  # within the allowance
    assert v.verify(token).principal == "ana"
    clock.now = NOW + 60  # exp <= now - skew: expired
    assert reason(v, token) == "jwt_expired"


def test_not_yet_valid_with_skew_boundary() -> None:
    key = ec_key("k1")
    clock = Clock()
    v = verifier(Jwks(key), clock, clock_skew_s=60)
    assert v.verify(sign(key, nbf=NOW + 60)).principal == "ana"  # nbf == now + skew: accepted
    assert reason(v, sign(key, nbf=NOW + 61)) == "jwt_not_yet_valid"
    assert reason(v, sign(key, iat=NOW + 61)) == "jwt_not_yet_valid"  # issued in the future


# ---- algorithms and keys -----------------------------------------------------------------------


def test_alg_none_is_refused() -> None:
    key = ec_key("k1")
    header = b64({"alg": "none", "kid": "k1", "typ": "JWT"})
    token = f"{header}.{b64(claims())}."
    assert looks_like_jwt(token)
    assert reason(verifier(Jwks(key)), token) == "jwt_alg"


def test_hmac_with_the_public_key_as_secret_is_refused() -> None:
    """The classic key-confusion attack (RFC 8725 §2.1): HS256 "signed" with the published
    public key. Refused for its algorithm, before any key is used."""
    from cryptography.hazmat.primitives import hmac as crypto_hmac
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = RSAKey.generate_key(2048, private=True, parameters={"kid": "r"})
    public_pem = key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'r', 'typ': 'JWT'})}.{b64(claims())}"
    mac = crypto_hmac.HMAC(public_pem, SHA256())
    mac.update(signing_input.encode())
    signature = base64.urlsafe_b64encode(mac.finalize()).rstrip(b"=").decode()
    assert reason(verifier(Jwks(key)), f"{signing_input}.{signature}") == "jwt_alg"


def test_symmetric_algorithms_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="asymmetric only"):
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, mapping=MAPPING, algorithms=("HS256",))


def test_a_key_for_another_algorithm_is_refused() -> None:
    """A key whose JWK says alg ES384 does not verify ES256 signatures (RFC 7517 §4.4)."""
    key = ec_key("k1")
    published = ECKey.import_key({**key.as_dict(private=False), "alg": "ES384"})
    assert reason(verifier(Jwks(published)), sign(key, "ES256")) == "jwt_alg"


def test_bad_signature() -> None:
    key, other = ec_key("k1"), ec_key("k1")  # same kid, another key
    assert reason(verifier(Jwks(key)), sign(other)) == "jwt_invalid"


def test_garbage_is_invalid_not_a_crash() -> None:
    key = ec_key("k1")
    v = verifier(Jwks(key))
    for token in ("a.b.c", f"{b64({'alg': 'ES256'})}.@@@.x", "x" * 20000 + ".a.b"):
        assert reason(v, token) in ("jwt_invalid", "jwt_alg"), token


def test_unknown_kid_fails_closed_and_refetches_rate_limited() -> None:
    key, new = ec_key("k1"), ec_key("k2")
    jwks = Jwks(key)
    v = verifier(jwks)
    assert jwks.fetches == 1
    # Within the interval after the first fetch: no fetch at all.
    with pytest.raises(AuthError, match="jwt_key_unknown"):
        asyncio.run(v.averify(sign(new)))
    assert jwks.fetches == 1
    v.monotonic.now += 31  # type: ignore[attr-defined]
    # The provider has not published k2: refetched once, then refused.
    with pytest.raises(AuthError, match="jwt_key_unknown"):
        asyncio.run(v.averify(sign(new)))
    assert jwks.fetches == 2
    # A flood of unknown kids within the interval makes no more fetches.
    for _ in range(5):
        with pytest.raises(AuthError, match="jwt_key_unknown"):
            asyncio.run(v.averify(sign(new)))
    assert jwks.fetches == 2


def test_rotation_new_kid_works_after_the_refetch() -> None:
    key, new = ec_key("k1"), ec_key("k2")
    jwks = Jwks(key)
    v = verifier(jwks)
    jwks.keys = [new]  # the provider rotated
    v.monotonic.now += 31  # type: ignore[attr-defined]  # past the refetch interval
    assert asyncio.run(v.averify(sign(new))).principal == "ana"
    assert jwks.fetches == 2
    # The withdrawn key is gone with the refetch.
    assert reason(v, sign(key)) == "jwt_key_unknown"


def test_provider_down_cached_keys_work_new_kids_fail_closed() -> None:
    key, new = ec_key("k1"), ec_key("k2")
    jwks = Jwks(key)
    v = verifier(jwks)
    jwks.down = True
    jwks.keys = [key, new]
    v.monotonic.now += 600  # type: ignore[attr-defined]  # cache stale, refetch allowed
    with pytest.raises(AuthError, match="jwt_key_unknown"):
        asyncio.run(v.averify(sign(new)))
    assert asyncio.run(v.averify(sign(key))).principal == "ana"  # kept though the fetch failed


def test_provider_down_at_start_refuses_until_it_answers() -> None:
    key = ec_key("k1")
    jwks = Jwks(key)
    jwks.down = True
    v = verifier(jwks)
    with pytest.raises(AuthError, match="jwt_key_unknown"):
        asyncio.run(v.averify(sign(key)))
    jwks.down = False
    v.monotonic.now += 31  # type: ignore[attr-defined]
    assert asyncio.run(v.averify(sign(key))).principal == "ana"


async def test_sync_verify_never_waits_but_starts_the_refetch() -> None:
    """The HTTP door's sync path: an unknown kid fails at once, and the refetch it starts in
    the background lets the next token through."""
    key, new = ec_key("k1"), ec_key("k2")
    jwks = Jwks(key)
    v = OidcVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, mapping=MAPPING), jwks, clock=Clock()
    )
    await v.start()
    jwks.keys = [key, new]
    v._last_attempt = float("-inf")  # past the interval
    with pytest.raises(AuthError, match="jwt_key_unknown"):
        v.verify(sign(new))
    deadline = time.monotonic() + 5
    while "k2" not in v.key_ids:
        assert time.monotonic() < deadline, "the background refetch did not happen"
        await asyncio.sleep(0.01)
    assert v.verify(sign(new)).principal == "ana"


async def test_a_withdrawn_key_stops_working_once_the_cache_is_old() -> None:
    """No unknown kid needed: a token verified after max_key_age_s refreshes the cache in the
    background, and the key the provider withdrew (say, compromised) goes with it."""
    key, new = ec_key("k1"), ec_key("k2")
    jwks = Jwks(key)
    monotonic = Clock()
    v = OidcVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, mapping=MAPPING),
        jwks,
        clock=Clock(),
        monotonic=monotonic,
    )
    await v.start()
    jwks.keys = [new]
    monotonic.now += 301
    assert v.verify(sign(key)).principal == "ana"  # still cached: this call starts the refresh
    deadline = time.monotonic() + 5
    while "k1" in v.key_ids:
        assert time.monotonic() < deadline, "the stale cache was not refreshed"
        await asyncio.sleep(0.01)
    assert reason(v, sign(key)) == "jwt_key_unknown"
    assert v.verify(sign(new)).principal == "ana"


async def test_prepare_lets_a_sync_door_see_a_rotated_key(tmp_path: Any) -> None:
    key, new = ec_key("k1"), ec_key("k2")
    jwks = Jwks(key)
    v = OidcVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, mapping=MAPPING), jwks, clock=Clock()
    )
    await v.start()
    both = Credentials(TokenStore(tmp_path / "tokens.json"), v)
    jwks.keys = [key, new]
    v._last_attempt = float("-inf")  # past the refetch interval
    token = sign(new)
    await both.prepare(f"Bearer {token}")
    assert jwks.fetches == 2
    assert both.verify(token).principal == "ana"
    await both.prepare(f"Bearer {sign(key)}")  # a cached kid: no fetch
    await both.prepare("Bearer agm_x")  # not a JWT: nothing
    await both.prepare(None)
    assert jwks.fetches == 2


def test_private_keys_in_a_jwks_are_used_as_public_only() -> None:
    key = ec_key("k1")

    def leaky() -> dict[str, Any]:
        return {"keys": [key.as_dict(private=True), {"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}

    v = OidcVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, mapping=MAPPING), leaky, clock=Clock()
    )
    asyncio.run(v.start())
    assert v.key_ids == {"k1"}  # the symmetric key is dropped
    assert v.verify(sign(key)).principal == "ana"


# ---- beside local tokens -------------------------------------------------------------------


def test_credentials_route_jwts_and_local_tokens(tmp_path: Any) -> None:
    key = ec_key("k1")
    store = TokenStore(tmp_path / "tokens.json")
    local, _ = store.create("svc", ["generate"])
    both = Credentials(store, verifier(Jwks(key)))
    assert both.verify(local).principal == "svc"
    assert both.verify(sign(key)).principal == "ana"
    assert asyncio.run(both.averify(sign(key))).principal == "ana"
    # Without an issuer configured a JWT is just an unknown token.
    with pytest.raises(AuthError, match="unknown"):
        Credentials(store).verify(sign(key))


def test_authenticate_bearer_with_jwts(tmp_path: Any) -> None:
    """The HTTP door's decision: JWT reasons reach on_failure, a token that maps to no role is
    PERMISSION_DENIED saying so, and the principal carries the roles."""
    from autoglm.server.errors import PermissionDenied, Unauthenticated
    from autoglm.server.security.auth import authenticate_bearer

    key = ec_key("k1")
    both = Credentials(TokenStore(tmp_path / "tokens.json"), verifier(Jwks(key)))
    reasons: list[str] = []

    def call(token: str, scope: str = "generate") -> Any:
        return authenticate_bearer(
            both, f"Bearer {token}", scope=scope, cert_identity=None, on_failure=reasons.append
        )

    principal = call(sign(key))
    assert (principal.name, principal.roles, principal.token_id) == ("ana", {"user"}, "jwt:tok-1")
    with pytest.raises(PermissionDenied, match="no role maps from this token's claims"):
        call(sign(key, groups=["others"]))
    with pytest.raises(PermissionDenied, match="lacks the scope 'generate'"):
        call(sign(key, groups=None, scope="llm:audit"))  # an auditor
    token = sign(key, aud="elsewhere")
    with pytest.raises(Unauthenticated, match=r"another audience \(aud\)") as err:
        call(token)
    assert token not in str(err.value)
    assert reasons == ["scope", "scope", "jwt_audience"]
