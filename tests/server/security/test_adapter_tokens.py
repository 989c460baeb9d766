"""Tokens restricted to LoRA adapters: the token file's `adapters`, and the JWT claim mapping's.

A tenant's token lists its adapters and reaches only those (api/calls.py checks it, tested in
tests/server/api/test_adapter_requests.py); a token without the list reaches every adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.server.security.auth import Principal
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.claims import parse_mapping


def test_a_token_lists_its_adapters_and_keeps_them(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("tenant-a", ["generate"], adapters=["a-support", "a-legal"])
    assert record.adapters == {"a-support", "a-legal"}
    assert TokenStore(store.path).verify(token).adapters == record.adapters  # read back
    principal = Principal.from_record(record)
    assert principal.allows_adapter("a-legal") and not principal.allows_adapter("b-support")


def test_a_token_without_adapters_reaches_every_adapter(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    _, record = store.create("ops", ["generate"])
    assert Principal.from_record(record).allows_adapter("anything")
    # The file of a token without adapters has no key for them: as before adapters existed.
    [item] = json.loads(store.path.read_text())["tokens"]
    assert "adapters" not in item


def test_blank_adapter_names_are_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    with pytest.raises(ValueError, match="adapters"):
        store.create("t", ["generate"], adapters=[" a"])


def test_claim_rules_grant_the_union_of_the_adapters_they_list() -> None:
    mapping = parse_mapping(
        {
            "rules": [
                {"claim": "groups", "values": ["llm-users"], "roles": ["user"]},
                {
                    "claim": "groups",
                    "values": ["tenant-a"],
                    "roles": ["user"],
                    "adapters": ["a-support"],
                },
                {"claim": "groups", "values": ["tenant-a-legal"], "roles": ["user"],
                 "adapters": ["a-legal"]},
            ]
        }
    )  # fmt: skip
    grant = mapping.grant({"groups": ["llm-users", "tenant-a", "tenant-a-legal"]})
    # A general rule without adapters does not widen a tenant's rule (unlike models).
    assert grant.adapters == {"a-support", "a-legal"}
    assert mapping.grant({"groups": ["llm-users"]}).adapters == frozenset()  # no restriction


def test_claim_rules_name_a_bad_adapters_list() -> None:
    rule = {"claim": "groups", "values": ["g"], "roles": ["user"], "adapters": "a"}
    with pytest.raises(ValueError, match=r"rules\[0\]\.adapters"):
        parse_mapping({"rules": [rule]})
