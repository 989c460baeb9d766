"""Token administration is audited: `autoglm token create/revoke` append to the admin chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.server.audit.verify import verify_dir
from autoglm.server.cli import main


def _records(audit_dir: Path) -> list[dict[str, object]]:
    lines = (audit_dir / "admin" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_create_and_revoke_are_recorded_without_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, audit = tmp_path / "tokens.json", tmp_path / "audit"
    args = ["--store", str(store), "--audit-dir", str(audit)]
    assert main(["token", "create", "payments", "--scope", "generate", *args]) == 0
    token = capsys.readouterr().out.strip()
    token_id = token.split("_")[1]
    assert main(["token", "revoke", token_id, *args]) == 0
    created, revoked = _records(audit)
    assert created["rpc"] == "token.create" and revoked["rpc"] == "token.revoke"
    assert created["status"] == "OK"
    assert created["target"] == f"token {token_id} for payments (scopes: generate)"
    assert str(created["principal"]).startswith("os:")  # who ran the command
    assert token not in (audit / "admin" / "audit.jsonl").read_text()
    result = verify_dir(audit / "admin", require_genesis=True)
    assert result.ok and result.records == 2


def test_revoking_an_unknown_token_is_a_clear_error_and_records_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, audit = tmp_path / "tokens.json", tmp_path / "audit"
    args = ["--store", str(store), "--audit-dir", str(audit)]
    assert main(["token", "create", "payments", "--scope", "generate", *args]) == 0
    capsys.readouterr()
    assert main(["token", "revoke", "nosuchid", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autoglm: error: token_id: no token 'nosuchid' in ") and str(store) in err
    assert [r["rpc"] for r in _records(audit)] == ["token.create"]


def test_the_default_audit_folder_is_beside_the_token_store(tmp_path: Path) -> None:
    store = tmp_path / "state" / "tokens.json"
    assert main(["token", "create", "ops", "--scope", "models:read", "--store", str(store)]) == 0
    (record,) = _records(tmp_path / "state" / "audit")
    assert record["rpc"] == "token.create"


def test_an_unrecordable_change_fails_the_command_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "audit"
    blocked.write_text("a file where the audit folder should be")
    store = tmp_path / "tokens.json"
    with pytest.raises(SystemExit) as exc:
        main(["token", "create", "x", "--scope", "generate", "--store", str(store),
              "--audit-dir", str(blocked)])  # fmt: skip
    assert "token.create done but NOT audited" in str(exc.value)
    capsys.readouterr()
