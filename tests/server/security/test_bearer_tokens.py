"""The token store: format, hashing at rest, verification reasons, cross-process revocation."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from autoglm.server.security.bearer_tokens import AuthError, TokenStore, TokenStoreError


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


def _reason(store: TokenStore, token: str | None) -> str:
    with pytest.raises(AuthError) as info:
        store.verify(token)
    assert not token or token not in str(info.value)
    return info.value.reason


def test_token_format_and_record(store: TokenStore) -> None:
    token, record = store.create("alice", {"generate", "models:read"}, models=["smol"])
    assert re.fullmatch(r"agm_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", token)
    assert token.split("_", 2)[1] == record.id
    assert record.principal == "alice"
    assert record.scopes == frozenset({"generate", "models:read"})
    assert record.models == frozenset({"smol"})
    assert record.expires_at is None and not record.revoked
    assert store.verify(token) == record


def test_only_the_hash_is_stored(store: TokenStore) -> None:
    token, record = store.create("alice", {"generate"})
    secret = token.split("_", 2)[2]
    text = store.path.read_text()
    assert secret not in text and token not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert secret not in repr(record) and secret not in repr(store)
    # Persisted: a new instance verifies it.
    assert TokenStore(store.path).verify(token) == record
    assert json.loads(text)["tokens"][0]["id"] == record.id


def test_failure_reasons(store: TokenStore) -> None:
    token, record = store.create("alice", {"generate"})
    token_id, secret = token.split("_", 2)[1:]
    assert _reason(store, None) == "missing"
    assert _reason(store, "") == "missing"
    assert _reason(store, "garbage") == "malformed"
    assert _reason(store, token + "x") == "malformed"
    assert _reason(store, f"agm_{'0' * 12}_{secret}") == "unknown"
    # A known id with another secret does not reveal the token's state.
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    assert _reason(store, f"agm_{token_id}_{other_secret}") == "unknown"
    store.revoke(record.id)
    assert _reason(store, token) == "revoked"
    assert _reason(store, f"agm_{token_id}_{other_secret}") == "unknown"


def test_expiry(tmp_path: Path) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    clock = [now]
    store = TokenStore(tmp_path / "t.json", clock=lambda: clock[0])
    token, record = store.create("bob", {"generate"}, ttl=timedelta(hours=1))
    assert record.expires_at == now + timedelta(hours=1)
    clock[0] = now + timedelta(minutes=59)
    assert store.verify(token) == record
    clock[0] = now + timedelta(hours=1)
    assert _reason(store, token) == "expired"


def test_revocation_by_another_instance(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    server = TokenStore(path, reload_interval=0)
    token, record = TokenStore(path).create("carol", {"generate"})
    assert server.verify(token) == record  # created elsewhere, picked up by reload
    TokenStore(path).revoke(record.id)
    assert _reason(server, token) == "revoked"


def test_reload_is_throttled(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    admin = TokenStore(path)
    token, record = admin.create("dave", {"generate"})
    server = TokenStore(path, reload_interval=3600)
    admin.revoke(record.id)
    # Within the interval the server does not even stat() the file.
    assert server.verify(token) == record


def test_list_revoke_and_validation(store: TokenStore) -> None:
    _, a = store.create("a", {"generate"})
    _, b = store.create("b", {"admin"})
    assert [r.id for r in store.list()] == [a.id, b.id]
    assert store.revoke(a.id).revoked
    assert store.revoke(a.id).revoked  # idempotent
    assert [r.revoked for r in store.list()] == [True, False]
    with pytest.raises(KeyError):
        store.revoke("0" * 12)
    with pytest.raises(ValueError):
        store.create("", {"generate"})
    with pytest.raises(ValueError):
        store.create("x", {"Bad Scope"})
    with pytest.raises(ValueError):
        store.create("x", {"generate"}, ttl=timedelta(0))


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    with pytest.raises(TokenStoreError):
        TokenStore(path)


def test_corrupt_file_at_runtime_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    server = TokenStore(path, reload_interval=0)
    token, _ = server.create("erin", {"generate"})
    path.write_text("{not json")
    assert _reason(server, token) == "unknown"
