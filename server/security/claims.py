"""From an identity provider's token claims to a principal, roles and allowed models.

The mapping is configuration (a TOML or JSON file, `--oidc-config`), e.g.

    principal_claim = "preferred_username"     # default "sub"

    [[rules]]
    claim = "groups"                           # a list of strings, or one string
    values = ["llm-users"]                     # any of them matches
    roles = ["user"]
    models = ["smollm2-135m-instruct"]         # empty or absent = every model
    adapters = ["tenant-a-support"]            # LoRA adapters; absent = no restriction

    [[rules]]
    claim = "scope"                            # space-separated (RFC 8693 §4.2 / RFC 9068)
    values = ["llm:audit"]
    roles = ["auditor"]

A claim name with dots reaches into objects (Keycloak's `realm_access.roles`). A token gets the
union of the roles of every rule it matches, and the union of their models, where a matched rule
without models allows every model. Adapters are the other way round, since they belong to
tenants: the union of the adapters of the matched rules that list some, and every adapter only
when no matched rule lists any (a general rule such as `llm-users` never widens a tenant's
rule). Pure: no I/O but `load_mapping` reading its file.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.server.security.roles import check_roles

__all__ = ["ClaimMapping", "MappingRule", "claim_values", "load_mapping", "parse_mapping"]

# Claims whose value is one string of space-separated values (OAuth scopes: RFC 6749 §3.3,
# carried as `scope` in JWT access tokens by RFC 9068 §2.2.3; `scp` is Azure AD's name).
_SPACE_SEPARATED = frozenset({"scope", "scp"})


@dataclass(frozen=True)
class MappingRule:
    claim: str
    values: frozenset[str]
    roles: frozenset[str]
    models: frozenset[str] = frozenset()  # empty = every model
    adapters: frozenset[str] = frozenset()  # empty = this rule does not restrict adapters

    def matches(self, claims: Mapping[str, Any]) -> bool:
        return not self.values.isdisjoint(claim_values(claims, self.claim))


@dataclass(frozen=True)
class Grant:
    roles: frozenset[str]
    models: frozenset[str]  # empty = every model
    adapters: frozenset[str] = frozenset()  # empty = every adapter


@dataclass(frozen=True)
class ClaimMapping:
    principal_claim: str = "sub"
    rules: tuple[MappingRule, ...] = ()

    def principal(self, claims: Mapping[str, Any]) -> str | None:
        """The caller's name: the configured claim, a non-empty string, else None."""
        value = _lookup(claims, self.principal_claim)
        return value if isinstance(value, str) and value.strip() else None

    def grant(self, claims: Mapping[str, Any]) -> Grant:
        matched = [rule for rule in self.rules if rule.matches(claims)]
        roles = frozenset().union(*(rule.roles for rule in matched))
        if any(not rule.models for rule in matched):
            models: frozenset[str] = frozenset()
        else:
            models = frozenset().union(*(rule.models for rule in matched))
        adapters = frozenset().union(*(rule.adapters for rule in matched))
        return Grant(roles=roles, models=models, adapters=adapters)


def claim_values(claims: Mapping[str, Any], name: str) -> frozenset[str]:
    """The string values of a claim: a list's strings, one string (split on spaces for the scope
    claims), nothing for anything else (numbers, objects, absent)."""
    value = _lookup(claims, name)
    if isinstance(value, str):
        last = name.rsplit(".", 1)[-1]
        return frozenset(value.split()) if last in _SPACE_SEPARATED else frozenset({value})
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _lookup(claims: Mapping[str, Any], name: str) -> Any:
    # An exact key first: some providers use claim names with dots (URIs as claim names).
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: must be a list of non-empty strings")
    return frozenset(value)


def parse_mapping(document: Mapping[str, Any], source: str = "oidc config") -> ClaimMapping:
    """The mapping a parsed file describes; ValueError naming the field that is wrong."""
    known = {"principal_claim", "rules"}
    unknown = sorted(set(document) - known)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown} (known: {sorted(known)})")
    principal_claim = document.get("principal_claim", "sub")
    if not isinstance(principal_claim, str) or not principal_claim:
        raise ValueError(f"{source}: principal_claim must be a non-empty string")
    raw_rules = document.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ValueError(f"{source}: rules must be a list of tables")
    rules = []
    for i, raw in enumerate(raw_rules):
        where = f"{source}: rules[{i}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: must be a table")
        extra = sorted(set(raw) - {"claim", "values", "roles", "models", "adapters"})
        if extra:
            raise ValueError(f"{where}: unknown keys {extra}")
        claim = raw.get("claim")
        if not isinstance(claim, str) or not claim:
            raise ValueError(f"{where}.claim: must be a non-empty string")
        values = _strings(raw.get("values"), f"{where}.values")
        if not values:
            raise ValueError(f"{where}.values: give at least one value")
        try:
            roles = check_roles(_strings(raw.get("roles"), f"{where}.roles"))
        except ValueError as exc:
            raise ValueError(f"{where}.roles: {exc}") from None
        if not roles:
            raise ValueError(f"{where}.roles: give at least one role")
        models = _strings(raw.get("models", []), f"{where}.models")
        adapters = _strings(raw.get("adapters", []), f"{where}.adapters")
        rules.append(
            MappingRule(claim=claim, values=values, roles=roles, models=models, adapters=adapters)
        )
    return ClaimMapping(principal_claim=principal_claim, rules=tuple(rules))


def load_mapping(path: Path) -> ClaimMapping:
    """The mapping in a .json file, else TOML; ValueError naming the file and the field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"oidc config {path}: {exc}") from None
    try:
        document = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"oidc config {path}: not valid {_kind(path)}: {exc}") from None
    if not isinstance(document, Mapping):
        raise ValueError(f"oidc config {path}: must be an object")
    return parse_mapping(document, f"oidc config {path}")


def _kind(path: Path) -> str:
    return "JSON" if str(path).endswith(".json") else "TOML"
