"""Roles bundle scopes; local tokens carry roles in the token file, backwards compatibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.server.cli import main
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.roles import ROLE_SCOPES, check_roles, scopes_of


def test_roles_expand_to_their_scopes() -> None:
    assert scopes_of(["user"]) == {"generate", "models:read"}
    assert scopes_of(["auditor"]) == {"audit:read", "models:read"}
    assert "generate" not in scopes_of(["auditor"])  # an auditor never generates
    assert scopes_of(["operator"]) >= scopes_of(["user"])
    assert scopes_of(["admin"]) == {"admin"}
    assert scopes_of(["user", "auditor"]) == {"generate", "models:read", "audit:read"}
    assert set(ROLE_SCOPES) == {"user", "operator", "auditor", "admin"}


def test_unknown_roles_are_named_and_grant_nothing() -> None:
    with pytest.raises(ValueError, match=r"unknown roles: \['root'\]"):
        check_roles(["user", "root"])
    assert scopes_of(["root"]) == frozenset()


def test_a_token_with_roles_has_their_scopes_and_its_own(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("ana", ["audit:read"], roles=["user"])
    assert record.roles == {"user"}
    assert record.scopes == {"generate", "models:read", "audit:read"}
    assert store.verify(token).scopes == record.scopes
    # Stored apart: the named scopes and the roles, never the roles' scopes baked in.
    (item,) = json.loads((tmp_path / "tokens.json").read_text())["tokens"]
    assert item["scopes"] == ["audit:read"]
    assert item["roles"] == ["user"]
    # Another process (the server) reads the same record.
    assert TokenStore(tmp_path / "tokens.json").verify(token).scopes == record.scopes


def test_unknown_role_refused_at_creation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        TokenStore(tmp_path / "tokens.json").create("ana", [], roles=["superuser"])


def test_token_file_without_roles_is_unchanged(tmp_path: Path) -> None:
    """A file written before roles existed reads the same, and is written back the same."""
    store = TokenStore(tmp_path / "tokens.json")
    token, _ = store.create("old", ["generate"])
    item = json.loads((tmp_path / "tokens.json").read_text())["tokens"][0]
    assert "roles" not in item
    assert store.verify(token).scopes == {"generate"}
    assert store.verify(token).roles == frozenset()


def test_a_role_unknown_to_this_version_grants_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    token, _ = store.create("ana", ["models:read"], roles=["user"])
    document = json.loads(path.read_text())
    document["tokens"][0]["roles"] = ["future-role"]
    path.write_text(json.dumps(document))
    assert TokenStore(path).verify(token).scopes == {"models:read"}


def test_cli_creates_a_token_with_a_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "tokens.json"
    assert (
        main(
            [
                "--home",
                str(tmp_path),
                "token",
                "create",
                "ana",
                "--role",
                "user",
                "--store",
                str(store),
            ]
        )
        == 0
    )
    token = capsys.readouterr().out.strip()
    record = TokenStore(store).verify(token)
    assert record.roles == {"user"}
    assert record.scopes == {"generate", "models:read"}
    assert main(["--home", str(tmp_path), "token", "list", "--store", str(store)]) == 0
    assert "user" in capsys.readouterr().out


def test_cli_refuses_an_unknown_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "tokens.json"
    assert (
        main(
            [
                "--home",
                str(tmp_path),
                "token",
                "create",
                "ana",
                "--role",
                "root",
                "--store",
                str(store),
            ]
        )
        == 2
    )
    assert "unknown roles" in capsys.readouterr().err
