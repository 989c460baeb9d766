"""Claim mapping: from an identity provider's claims to a principal, roles and models."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.server.security.claims import claim_values, load_mapping, parse_mapping

TOML = """
principal_claim = "preferred_username"

[[rules]]
claim = "groups"
values = ["llm-users"]
roles = ["user"]
models = ["small"]

[[rules]]
claim = "realm_access.roles"
values = ["llm-operators"]
roles = ["operator"]

[[rules]]
claim = "scope"
values = ["llm:audit"]
roles = ["auditor"]
models = ["big"]
"""


def test_toml_mapping(tmp_path: Path) -> None:
    path = tmp_path / "oidc.toml"
    path.write_text(TOML)
    mapping = load_mapping(path)
    claims = {"preferred_username": "ana", "sub": "1", "groups": ["llm-users", "x"]}
    assert mapping.principal(claims) == "ana"
    grant = mapping.grant(claims)
    assert grant.roles == {"user"} and grant.models == {"small"}


def test_union_of_matched_rules_and_a_rule_without_models_allows_all(tmp_path: Path) -> None:
    path = tmp_path / "oidc.toml"
    path.write_text(TOML)
    mapping = load_mapping(path)
    both = mapping.grant({"groups": ["llm-users"], "scope": "openid llm:audit"})
    assert both.roles == {"user", "auditor"} and both.models == {"small", "big"}
    keycloak = mapping.grant({"groups": "llm-users", "realm_access": {"roles": ["llm-operators"]}})
    assert keycloak.roles == {"user", "operator"} and keycloak.models == frozenset()
    assert mapping.grant({"groups": ["other"]}).roles == frozenset()


def test_json_mapping(tmp_path: Path) -> None:
    path = tmp_path / "oidc.json"
    path.write_text('{"rules": [{"claim": "azp", "values": ["batch"], "roles": ["user"]}]}')
    mapping = load_mapping(path)
    assert mapping.principal_claim == "sub"
    assert mapping.grant({"azp": "batch"}).roles == {"user"}


def test_claim_values() -> None:
    assert claim_values({"scope": "a b  c"}, "scope") == {"a", "b", "c"}
    assert claim_values({"groups": "a b"}, "groups") == {"a b"}  # one group with a space
    assert claim_values({"groups": ["a", 3, None]}, "groups") == {"a"}
    assert claim_values({"n": 3}, "n") == frozenset()
    assert claim_values({"https://x.test/roles": ["r"]}, "https://x.test/roles") == {"r"}
    assert claim_values({}, "a.b") == frozenset()


def test_principal_must_be_a_non_empty_string() -> None:
    mapping = parse_mapping({})
    assert mapping.principal({"sub": "x"}) == "x"
    assert mapping.principal({"sub": ""}) is None
    assert mapping.principal({"sub": 7}) is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"principal": "sub"}, "unknown keys"),
        ({"principal_claim": ""}, "principal_claim"),
        ({"rules": {}}, "rules must be a list"),
        ({"rules": [{"claim": "g", "values": ["a"], "roles": ["root"]}]}, r"rules\[0\].roles"),
        ({"rules": [{"claim": "g", "values": [], "roles": ["user"]}]}, r"rules\[0\].values"),
        ({"rules": [{"values": ["a"], "roles": ["user"]}]}, r"rules\[0\].claim"),
        ({"rules": [{"claim": "g", "values": ["a"], "roles": []}]}, "at least one role"),
        ({"rules": [{"claim": "g", "values": ["a"], "roles": ["user"], "x": 1}]}, "unknown"),
        ({"rules": [{"claim": "g", "values": ["a"], "roles": ["user"], "models": "m"}]}, "models"),
    ],
)
def test_bad_mappings_name_the_field(document: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mapping(document)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="oidc config"):
        load_mapping(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rules = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_mapping(bad)
