"""The OpenAI door's model names for LoRA adapters: `BASE:ADAPTER`, or the adapter's own name.

OpenAI's API has one `model` field, so an adapter is named there, as vLLM's OpenAI server does
(an adapter is served under its own name and listed in /v1/models with its base as `parent`,
vllm/entrypoints/openai/serving_models.py); `BASE:ADAPTER` says both explicitly. Both become
autoglm.v1's (`model`, `adapter`), checked by the same code as on gRPC (api/calls.py), whose
errors naming `adapter` reach the caller as `model` (protocol.param_name).
"""

from __future__ import annotations

from autoglm.server.errors import PermissionDenied
from autoglm.server.models import ModelRegistry
from autoglm.server.security.auth import Principal

SEPARATOR = ":"


def resolve(name: str, registry: ModelRegistry, principal: Principal | None) -> tuple[str, str]:
    """(model, adapter) of an OpenAI `model` value; adapter "" for the base model alone.

    A name that is neither a served model nor `BASE:ADAPTER` is an adapter's own name. A token
    restricted to some adapters gets PERMISSION_DENIED for any other such name, whether an
    adapter of that name exists or not (so it cannot probe other tenants' adapters); a name that
    is no adapter stays a model name, refused as before (NOT_FOUND, or PERMISSION_DENIED for a
    token restricted to some models).
    """
    if registry.get(name) is not None:
        return name, ""
    base, sep, adapter = name.partition(SEPARATOR)
    if sep and adapter:
        return base, adapter
    if principal is not None and principal.adapters and name not in principal.adapters:
        raise PermissionDenied(f"model: this token may not use {name!r}", field="model")
    found = registry.adapter(name)
    if found is None:
        return name, ""
    return found.base, found.name


def metrics_model(name: str, registry: ModelRegistry) -> str:
    """The served model a name's call counts under (metrics), without checking anything."""
    if registry.get(name) is not None:
        return name
    base, sep, _ = name.partition(SEPARATOR)
    if sep:
        return base
    found = registry.adapter(name)
    return found.base if found is not None else name
