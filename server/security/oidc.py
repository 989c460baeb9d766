"""JWT bearer tokens of an OpenID Connect provider, verified with joserfc.

The issuer's keys come from its discovery document (`<issuer>/.well-known/openid-configuration`,
OpenID Connect Discovery 1.0 §4) and the `jwks_uri` it names, over HTTPS with a configurable CA.
They are cached; a token signed with a `kid` the cache lacks makes the verifier fetch them again
(key rotation), at most once per `refetch_interval_s`, and the cache is refreshed in the
background once older than `max_key_age_s` (keys the provider withdrew stop working). When the
provider is down the cached keys keep working; a `kid` never seen fails closed.

Checked on every token (RFC 7519 §7.2, RFC 9068 §4): the algorithm is one of an explicit
asymmetric list (never `none`, never HMAC: a public key is no secret, RFC 8725 §3.1-3.2), the
signature, `iss`, `aud`, `exp` (required), `nbf` and `iat`, with `clock_skew_s` of allowance.
Then the claims are mapped to a principal, roles and models (claims.py).

Network I/O never runs on the event loop: fetches run in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key, import_key

from autoglm.server.security.bearer_tokens import AuthError, AuthFailure, TokenRecord
from autoglm.server.security.claims import ClaimMapping
from autoglm.server.security.roles import scopes_of

__all__ = [
    "DEFAULT_ALGORITHMS",
    "HttpsJwks",
    "OidcConfig",
    "OidcVerifier",
    "looks_like_jwt",
]

logger = logging.getLogger(__name__)

# Asymmetric signature algorithms only (RFC 7518 §3.3-3.5, RFC 8037 §3.1): the verifier holds
# public keys, and an HMAC "verified" with one would let anyone who reads the JWKS sign tokens.
DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)
_SYMMETRIC_OR_NONE = re.compile(r"none|HS\d+", re.IGNORECASE)
# Compact JWS: three base64url parts (the last empty for alg "none"). Local tokens (agm_…)
# never contain a dot.
_JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_TOKEN_CHARS = 16 * 1024  # far above any provider's access token; a bound on parsing work
_MAX_DOCUMENT_BYTES = 1 << 20
_JTI_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def looks_like_jwt(token: str) -> bool:
    return _JWT_RE.fullmatch(token) is not None


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    mapping: ClaimMapping
    clock_skew_s: float = 60.0
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    # A token with an unknown kid triggers a JWKS fetch at most this often (a flood of forged
    # kids must not become a flood of requests to the provider).
    refetch_interval_s: float = 30.0
    # Cached keys older than this are refreshed in the background.
    max_key_age_s: float = 300.0

    def __post_init__(self) -> None:
        bad = [a for a in self.algorithms if _SYMMETRIC_OR_NONE.fullmatch(a)]
        if bad:
            raise ValueError(f"oidc algorithms: {bad} are not allowed (asymmetric only)")
        if not 0 <= self.clock_skew_s <= 300:
            raise ValueError(f"oidc clock_skew_s: must be in [0, 300], got {self.clock_skew_s}")


class HttpsJwks:
    """Fetches the issuer's JWKS through its discovery document (blocking: run it in a thread)."""

    def __init__(self, issuer: str, *, ca_file: Path | None = None, timeout_s: float = 5.0):
        if not issuer.startswith("https://"):
            raise ValueError(f"oidc issuer: must be an https:// URL, got {issuer!r}")
        self._issuer = issuer
        self._timeout_s = timeout_s
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        # No redirects: the documents must come from the URLs the issuer names.
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _NoRedirect()
        )

    def __call__(self) -> dict[str, Any]:
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        discovery = self._get_json(url)
        # OpenID Connect Discovery 1.0 §4.3: the document's issuer must be the one asked for.
        if discovery.get("issuer") != self._issuer:
            raise ValueError(f"discovery document names issuer {discovery.get('issuer')!r}")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise ValueError(f"discovery document: jwks_uri {jwks_uri!r} is not https")
        return self._get_json(jwks_uri)

    def _get_json(self, url: str) -> dict[str, Any]:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with self._opener.open(request, timeout=self._timeout_s) as response:
            body = response.read(_MAX_DOCUMENT_BYTES + 1)
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url}: larger than {_MAX_DOCUMENT_BYTES} bytes")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url}: not a JSON object")
        return document


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx


def _signing_keys(document: Mapping[str, Any]) -> dict[str | None, Key]:
    """The JWKS's signature keys by kid; keys for encryption or of unknown types are skipped."""
    keys: dict[str | None, Key] = {}
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list):
        raise ValueError("JWKS: no 'keys' list")
    for raw in raw_keys:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        if raw.get("kty") == "oct":
            continue  # a symmetric key has no place in a public JWKS
        try:
            key = import_key(raw)
        except (JoseError, ValueError, TypeError) as exc:
            logger.warning("JWKS: skipping key kid=%s: %s", raw.get("kid"), exc)
            continue
        if key.is_private:
            # A provider that publishes private keys is misconfigured; use only the public part.
            key = import_key(key.as_dict(private=False))
        keys[raw.get("kid")] = key
    return keys


class OidcVerifier:
    """Verifies JWT bearer tokens of one issuer and maps them to token records."""

    def __init__(
        self,
        config: OidcConfig,
        fetch_jwks: Callable[[], Mapping[str, Any]],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._fetch_jwks = fetch_jwks
        self._clock = clock
        self._monotonic = monotonic
        self._keys: dict[str | None, Key] = {}
        self._fetched_at: float | None = None  # monotonic time of the last successful fetch
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"OidcVerifier(issuer={self._config.issuer!r}, keys={sorted(map(str, self._keys))})"

    @property
    def config(self) -> OidcConfig:
        return self._config

    @property
    def key_ids(self) -> frozenset[str | None]:
        return frozenset(self._keys)

    # --- keys --------------------------------------------------------------------------------

    async def start(self) -> None:
        """The first fetch; a provider down at start-up is logged, and retried on demand."""
        await self.refresh(force=True)
        if self._fetched_at is None:
            logger.error(
                "OIDC issuer %s: no keys yet; JWT bearer tokens are refused until they are fetched",
                self._config.issuer,
            )

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the JWKS again, unless one was tried less than `refetch_interval_s` ago.
        Concurrent callers share one fetch. A failed fetch keeps the cached keys."""
        if self._inflight is None or self._inflight.done():
            now = self._monotonic()
            if not force and now - self._last_attempt < self._config.refetch_interval_s:
                return
            self._last_attempt = now
            self._inflight = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        try:
            document = await asyncio.to_thread(self._fetch_jwks)
            keys = _signing_keys(document)
        except Exception as exc:
            # Whatever went wrong (network, TLS, HTTP, JSON, keys), the cached keys stay and a
            # token with an unknown kid is refused: a failed fetch never fails a call otherwise.
            logger.warning(
                "OIDC issuer %s: JWKS fetch failed, keeping %d cached keys: %s",
                self._config.issuer,
                len(self._keys),
                exc,
            )
            return
        if set(keys) != set(self._keys):
            logger.info(
                "OIDC issuer %s: signing keys %s", self._config.issuer, sorted(map(str, keys))
            )
        self._keys = keys
        self._fetched_at = self._monotonic()

    def _refresh_soon(self) -> None:
        """A refresh in the background, from code that cannot wait (a sync caller)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _refresh_if_stale(self) -> None:
        if (
            self._fetched_at is not None
            and self._monotonic() - self._fetched_at > self._config.max_key_age_s
        ):
            self._refresh_soon()

    # --- verification --------------------------------------------------------------------------

    def verify(self, token: str) -> TokenRecord:
        """With the cached keys only (never waits): an unknown kid starts a refetch in the
        background and fails this token (jwt_key_unknown)."""
        alg, kid = self._header(token)
        key = self._key(kid)
        if key is None:
            self._refresh_soon()
            raise AuthError("jwt_key_unknown")
        self._refresh_if_stale()
        return self._validate(token, key, alg)

    async def averify(self, token: str) -> TokenRecord:
        """As `verify`, but an unknown kid waits for a refetch (rate-limited) first."""
        alg, kid = self._header(token)
        key = self._key(kid)
        if key is None:
            await self.refresh()
            key = self._key(kid)
            if key is None:
                raise AuthError("jwt_key_unknown")
        else:
            self._refresh_if_stale()
        return self._validate(token, key, alg)

    async def ensure_key(self, token: str) -> None:
        """Wait for the (rate-limited) refetch if the token's kid is not cached, so that a sync
        `verify` right after finds it; never raises (`verify` gives the reasons)."""
        try:
            _alg, kid = self._header(token)
        except AuthError:
            return
        if self._key(kid) is None:
            await self.refresh()

    def _header(self, token: str) -> tuple[str, str | None]:
        if len(token) > _MAX_TOKEN_CHARS or not looks_like_jwt(token):
            raise AuthError("jwt_invalid")
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError, UnicodeError):
            raise AuthError("jwt_invalid") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._config.algorithms:
            raise AuthError("jwt_alg")
        if header.get("crit") is not None:
            raise AuthError("jwt_invalid")  # no critical extensions are understood here
        if kid is not None and not isinstance(kid, str):
            raise AuthError("jwt_invalid")
        return alg, kid

    def _key(self, kid: str | None) -> Key | None:
        if kid is None:
            # Without a kid only an issuer with a single key is unambiguous.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _validate(self, token: str, key: Key, alg: str) -> TokenRecord:
        key_alg = key.alg
        if key_alg is not None and key_alg != alg:
            raise AuthError("jwt_alg")  # RFC 7517 §4.4: the key is for another algorithm
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except BadSignatureError:
            raise AuthError("jwt_invalid") from None
        except JoseError:
            # Key type not matching the algorithm, payload not a JSON object, …
            raise AuthError("jwt_invalid") from None
        claims = decoded.claims
        config = self._config
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=int(config.clock_skew_s),
            iss={"essential": True, "value": config.issuer},
            aud={"essential": True, "value": config.audience},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise AuthError("jwt_expired") from None
        except MissingClaimError:
            raise AuthError("jwt_claims") from None
        except InvalidClaimError as exc:
            raise AuthError(_INVALID_CLAIM.get(exc.claim, "jwt_claims")) from None
        return self._record(token, claims)

    def _record(self, token: str, claims: Mapping[str, Any]) -> TokenRecord:
        mapping = self._config.mapping
        principal = mapping.principal(claims)
        if principal is None:
            raise AuthError("jwt_claims")
        grant = mapping.grant(claims)
        iat = claims.get("iat")
        created = datetime.fromtimestamp(
            iat if isinstance(iat, int | float) else self._clock(), UTC
        )
        return TokenRecord(
            id=_token_id(token, claims),
            principal=principal,
            scopes=scopes_of(grant.roles),
            models=grant.models,
            created_at=created,
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            roles=grant.roles,
            adapters=grant.adapters,
        )


_INVALID_CLAIM: dict[str, AuthFailure] = {
    "iss": "jwt_issuer",
    "aud": "jwt_audience",
    "nbf": "jwt_not_yet_valid",
    "iat": "jwt_not_yet_valid",
    "exp": "jwt_claims",  # not a NumericDate
}


def _token_id(token: str, claims: Mapping[str, Any]) -> str:
    """Stable and non-secret: the token's `jti`, else a hash prefix of the whole token (which
    identifies it in logs and the audit without letting anyone rebuild it)."""
    jti = claims.get("jti")
    if isinstance(jti, str) and _JTI_RE.fullmatch(jti):
        return f"jwt:{jti}"
    return "jwt:sha256:" + hashlib.sha256(token.encode("ascii")).hexdigest()[:16]
