"""Bearer-token store: `agm_<id>_<secret>` tokens, only a hash of the secret kept on disk.

The store is a small JSON file shared by the running server (which verifies) and the admin CLI
(which creates and revokes). The server notices changes by the file's stat signature, so a
revocation made by another process takes effect within `reload_interval` seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from autoglm.server.files import write_atomic
from autoglm.server.security.limits import PrincipalLimits
from autoglm.server.security.roles import check_roles, scopes_of

__all__ = ["AuthError", "AuthFailure", "TokenRecord", "TokenStore", "TokenStoreError"]

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "agm"
_ID_HEX_CHARS = 12
_SECRET_BYTES = 32
# secrets.token_urlsafe(32) is 43 characters of [A-Za-z0-9_-] (unpadded base64url). The id is hex,
# so splitting on the first two "_" is unambiguous even though the secret may contain "_".
_TOKEN_RE = re.compile(r"agm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SCOPE_RE = re.compile(r"[a-z][a-z0-9_.-]*(:[a-z0-9_.-]+)*")
_FILE_VERSION = 1

AuthFailure = Literal[
    "missing",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    # JWT bearer tokens of the identity provider (oidc.py): why one was refused, for the audit.
    "jwt_invalid",  # not a JWS we can verify: bad encoding, bad signature, not a JSON object
    "jwt_alg",  # an algorithm outside the allowed asymmetric list (none, HS*, …)
    "jwt_key_unknown",  # no key of the issuer's JWKS has this kid (after a refetch)
    "jwt_issuer",
    "jwt_audience",
    "jwt_expired",
    "jwt_not_yet_valid",  # nbf (or iat) beyond the clock-skew allowance
    "jwt_claims",  # a required claim missing or of the wrong type (exp, the principal claim)
]


class AuthError(Exception):
    """A token was refused. The message is the reason only: never the token or any part of it."""

    def __init__(self, reason: AuthFailure) -> None:
        super().__init__(reason)
        self.reason: AuthFailure = reason


class TokenStoreError(Exception):
    """The token file cannot be read or parsed."""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    principal: str
    scopes: frozenset[str]
    models: frozenset[str]  # empty = every model
    created_at: datetime
    expires_at: datetime | None = None
    revoked: bool = False
    # Only usable over mTLS by a client certificate with this identity (SAN, else CN).
    bound_identity: str | None = None
    # Per-principal overrides of the server's default limits (None = defaults).
    limits: PrincipalLimits | None = None
    # Roles (roles.py) the token carries; `scopes` already includes their scopes.
    roles: frozenset[str] = frozenset()
    # The scopes given by name, as stored (None = all of `scopes`): kept apart from the roles'
    # scopes so that a role's definition is read afresh, never frozen into the file.
    named_scopes: frozenset[str] | None = None
    # LoRA adapters the token may use (server/adapters.py); empty = every adapter.
    adapters: frozenset[str] = frozenset()

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _hash_secret(secret: str) -> str:
    # A plain SHA-256 is the right tool here, unlike for passwords: the secret is 256 random bits
    # from `secrets`, so there is nothing to brute-force and a slow KDF (bcrypt/argon2) would only
    # add latency to every RPC.
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class TokenStore:
    """Tokens persisted in a JSON file (mode 0600, replaced atomically on every change)."""

    def __init__(
        self,
        path: Path,
        *,
        reload_interval: float = 0.5,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._path = Path(path)
        self._reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, TokenRecord] = {}
        self._hashes: dict[str, str] = {}
        self._signature: tuple[int, ...] | None = None
        self._checked_at = float("-inf")
        with self._lock:
            self._reload(strict=True)

    def __repr__(self) -> str:
        return f"TokenStore(path={str(self._path)!r}, tokens={len(self._records)})"

    @property
    def path(self) -> Path:
        return self._path

    # --- administration -------------------------------------------------------------------

    def create(
        self,
        principal: str,
        scopes: Iterable[str],
        models: Iterable[str] = (),
        ttl: timedelta | None = None,
        *,
        bound_identity: str | None = None,
        limits: PrincipalLimits | None = None,
        roles: Iterable[str] = (),
        adapters: Iterable[str] = (),
    ) -> tuple[str, TokenRecord]:
        """Creates a token. The plain token is returned here, once; only its hash is stored.
        Its scopes are the named `scopes` and those of its `roles` (roles.py)."""
        if not principal or principal != principal.strip():
            raise ValueError("principal must be a non-empty name without surrounding spaces")
        scope_set = frozenset(scopes)
        bad = sorted(s for s in scope_set if not _SCOPE_RE.fullmatch(s))
        if bad:
            raise ValueError(f"invalid scopes: {bad}")
        role_set = check_roles(roles)
        adapter_set = frozenset(adapters)
        if any(not a or a != a.strip() for a in adapter_set):
            raise ValueError("adapters must be non-empty names without surrounding spaces")
        if ttl is not None and ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        now = self._clock()
        with self._locked_for_update():
            token_id = secrets.token_hex(_ID_HEX_CHARS // 2)
            while token_id in self._records:
                token_id = secrets.token_hex(_ID_HEX_CHARS // 2)
            secret = secrets.token_urlsafe(_SECRET_BYTES)
            record = TokenRecord(
                id=token_id,
                principal=principal,
                scopes=scope_set | scopes_of(role_set),
                models=frozenset(models),
                created_at=now,
                expires_at=now + ttl if ttl is not None else None,
                bound_identity=bound_identity or None,
                limits=limits,
                roles=role_set,
                named_scopes=scope_set,
                adapters=adapter_set,
            )
            self._records[token_id] = record
            self._hashes[token_id] = _hash_secret(secret)
            self._save()
        logger.info("token created: id=%s principal=%s", token_id, principal)
        return f"{TOKEN_PREFIX}_{token_id}_{secret}", record

    def list(self) -> list[TokenRecord]:
        with self._lock:
            self._maybe_reload()
            return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))

    def revoke(self, token_id: str) -> TokenRecord:
        """Marks a token revoked (idempotent). Raises KeyError for an unknown id."""
        with self._locked_for_update():
            record = replace(self._records[token_id], revoked=True)
            self._records[token_id] = record
            self._save()
        logger.info("token revoked: id=%s principal=%s", token_id, record.principal)
        return record

    # --- verification -----------------------------------------------------------------------

    def verify(self, token: str | None) -> TokenRecord:
        """Returns the record of a valid token, else raises AuthError(reason)."""
        if not token:
            raise AuthError("missing")
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            raise AuthError("malformed")
        token_id, secret = match.groups()
        with self._lock:
            self._maybe_reload()
            if token_id not in self._records and time.monotonic() - self._checked_at >= 0.05:
                # A token created a moment ago by `autoglm token create` works at once, at the
                # cost of at most one stat() per 50 ms for unknown ids (re-read only if changed).
                self._reload(strict=False)
            record = self._records.get(token_id)
            stored_hash = self._hashes.get(token_id)
        # Hash even for an unknown id so that timing does not tell which ids exist.
        presented = _hash_secret(secret)
        if record is None or stored_hash is None:
            hmac.compare_digest(presented, presented)
            raise AuthError("unknown")
        if not hmac.compare_digest(presented, stored_hash):
            # A known id with a wrong secret is "unknown" too: only the secret's holder may learn
            # that a token is revoked or expired.
            raise AuthError("unknown")
        if record.revoked:
            raise AuthError("revoked")
        if record.expired(self._clock()):
            raise AuthError("expired")
        return record

    # --- persistence ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked_for_update(self) -> Iterator[None]:
        """Read-modify-write under a thread lock and an advisory file lock.

        The file lock lives on a side file because the token file itself is replaced (a new inode)
        on every write; it keeps two admin processes from losing each other's changes.
        """
        lock_path = self._path.with_name(self._path.name + ".lock")
        with self._lock:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._reload(strict=True, force=True)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _maybe_reload(self) -> None:
        # At most one stat() per interval: verify() runs on every RPC.
        if time.monotonic() - self._checked_at >= self._reload_interval:
            self._reload(strict=False)

    def _reload(self, *, strict: bool, force: bool = False) -> None:
        self._checked_at = time.monotonic()
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._records, self._hashes, self._signature = {}, {}, None
            return
        # The inode changes on every atomic replace; size and both times catch in-place edits.
        signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if signature == self._signature and not force:
            return
        try:
            records, hashes = _parse(self._path.read_bytes())
        except (OSError, TokenStoreError) as err:
            if strict:
                raise TokenStoreError(f"cannot load token file {self._path}: {err}") from err
            # Fail closed: a broken file must not keep revoked tokens alive. Retried once the file
            # changes again.
            logger.error("token file %s unreadable, refusing all tokens: %s", self._path, err)
            records, hashes = {}, {}
        self._records, self._hashes, self._signature = records, hashes, signature

    def _save(self) -> None:
        document = {
            "version": _FILE_VERSION,
            "tokens": [
                _record_to_json(record, self._hashes[token_id])
                for token_id, record in sorted(self._records.items())
            ],
        }
        data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(self._path, data, mode=0o600)
        st = self._path.stat()
        self._signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _record_to_json(record: TokenRecord, secret_sha256: str) -> dict[str, Any]:
    named = record.scopes if record.named_scopes is None else record.named_scopes
    document = {
        "id": record.id,
        "principal": record.principal,
        "scopes": sorted(named),
        "models": sorted(record.models),
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "revoked": record.revoked,
        "bound_identity": record.bound_identity,
        "limits": record.limits.to_json() if record.limits else None,
        "secret_sha256": secret_sha256,
    }
    # Only tokens with roles get the key: a file without roles stays byte-for-byte what the
    # versions before roles wrote (and read).
    if record.roles:
        document["roles"] = sorted(record.roles)
    if record.adapters:  # likewise
        document["adapters"] = sorted(record.adapters)
    return document


def _parse(data: bytes) -> tuple[dict[str, TokenRecord], dict[str, str]]:
    try:
        document = json.loads(data)
        if document.get("version") != _FILE_VERSION:
            raise TokenStoreError(f"unsupported version {document.get('version')!r}")
        records: dict[str, TokenRecord] = {}
        hashes: dict[str, str] = {}
        for item in document["tokens"]:
            expires_at = item.get("expires_at")
            named = frozenset(item["scopes"])
            roles = frozenset(item.get("roles", ()))
            if any(not isinstance(r, str) for r in roles):
                raise TypeError("roles")
            adapters = item.get("adapters", [])
            if not isinstance(adapters, list) or any(not isinstance(a, str) for a in adapters):
                raise TypeError("adapters")
            record = TokenRecord(
                id=str(item["id"]),
                principal=str(item["principal"]),
                # A role this version does not know grants nothing (scopes_of): fail closed.
                scopes=named | scopes_of(roles),
                models=frozenset(item.get("models", ())),
                created_at=datetime.fromisoformat(item["created_at"]),
                expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
                revoked=bool(item.get("revoked", False)),
                bound_identity=item.get("bound_identity") or None,
                limits=PrincipalLimits.from_json(item.get("limits")),
                roles=roles,
                named_scopes=named,
                adapters=frozenset(adapters),
            )
            records[record.id] = record
            hashes[record.id] = str(item["secret_sha256"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise TokenStoreError(f"malformed token file ({type(err).__name__})") from err
    return records, hashes
