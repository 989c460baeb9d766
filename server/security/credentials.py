"""The bearer credentials a front door accepts: local tokens (bearer_tokens.py) and, when an
identity provider is configured, its JWT access tokens (oidc.py).

Both come out as a `TokenRecord`, so that scopes, models, limits and certificate binding are
decided by one code path (auth.py) whatever issued the token.
"""

from __future__ import annotations

from pathlib import Path

from autoglm.server.security.bearer_tokens import AuthError, TokenRecord, TokenStore
from autoglm.server.security.oidc import OidcVerifier, looks_like_jwt

__all__ = ["Credentials", "averify"]


class Credentials:
    def __init__(self, tokens: TokenStore, oidc: OidcVerifier | None = None) -> None:
        self.tokens = tokens
        self.oidc = oidc

    def __repr__(self) -> str:
        return f"Credentials({self.tokens!r}, oidc={self.oidc!r})"

    @property
    def path(self) -> Path:
        return self.tokens.path

    def verify(self, token: str | None) -> TokenRecord:
        """Never waits on the network (a JWT with an unknown kid fails, and starts a refetch)."""
        if token and looks_like_jwt(token):
            if self.oidc is None:
                raise AuthError("unknown")  # as any token this service did not issue
            return self.oidc.verify(token)
        return self.tokens.verify(token)

    async def averify(self, token: str | None) -> TokenRecord:
        """As `verify`, but a JWT with an unknown kid waits for the JWKS refetch first."""
        if token and looks_like_jwt(token) and self.oidc is not None:
            return await self.oidc.averify(token)
        return self.verify(token)

    async def prepare(self, authorization: str | None) -> None:
        """For a front door whose check is sync (the OpenAI routes): await this with the
        `Authorization` header first, so that a JWT signed by a key the provider has just
        rotated in passes at once instead of after the background refetch."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and self.oidc is not None and looks_like_jwt(token):
            await self.oidc.ensure_key(token)


async def averify(store: TokenStore | Credentials, token: str | None) -> TokenRecord:
    """The record of `token` from either kind of store (auth.py takes both)."""
    if isinstance(store, Credentials):
        return await store.averify(token)
    return store.verify(token)
