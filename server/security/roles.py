"""Roles: named bundles of scopes, for local tokens and for identity-provider tokens alike.

A deployment grants people and services a role (`user`, `operator`, `auditor`, `admin`) instead
of a hand-made list of scopes; the scopes a method needs stay where they are (auth.py
`DEFAULT_METHOD_SCOPES`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

__all__ = ["ROLES", "ROLE_SCOPES", "check_roles", "scopes_of"]

# The scopes of auth.py (not imported: auth.py imports this module through bearer_tokens.py).
_GENERATE = "generate"
_MODELS_READ = "models:read"
# Switching a model's served version (today SIGHUP; named now so that operator tokens carry it
# when an RPC for it exists; no method needs it yet, and `admin` covers it anyway).
_MODELS_SWITCH = "models:switch"
_AUDIT_READ = "audit:read"
_ADMIN = "admin"  # every method (auth.py ADMIN_SCOPE)

ROLE_SCOPES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # People and services that generate: the models they are allowed, and their list.
        "user": frozenset({_GENERATE, _MODELS_READ}),
        # Runs the service: what users do, plus switching model versions.
        "operator": frozenset({_GENERATE, _MODELS_READ, _MODELS_SWITCH}),
        # Reads the audit trail and what is served, and never generates: an auditor's token
        # cannot be used to produce (or to see) model output.
        "auditor": frozenset({_AUDIT_READ, _MODELS_READ}),
        "admin": frozenset({_ADMIN}),
    }
)
ROLES: tuple[str, ...] = tuple(ROLE_SCOPES)


def check_roles(roles: Iterable[str]) -> frozenset[str]:
    """The roles as a set; ValueError naming the unknown ones (and the known ones)."""
    wanted = frozenset(roles)
    unknown = sorted(wanted - ROLE_SCOPES.keys())
    if unknown:
        raise ValueError(f"unknown roles: {unknown} (known: {', '.join(ROLES)})")
    return wanted


def scopes_of(roles: Iterable[str]) -> frozenset[str]:
    """The union of the roles' scopes; an unknown role grants nothing (fail closed)."""
    return frozenset().union(*(ROLE_SCOPES.get(role, frozenset()) for role in roles))
