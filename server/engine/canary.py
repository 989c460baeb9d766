"""Which version of a model answers a principal while a canary runs: a pure, sticky choice.

A canary (build_engine/version_plan.py `Canary`) serves `weight` percent of the principals
beside the stable version. The choice hashes the principal's name (sha256, the first 8 bytes
as an integer, mod 100): the same principal always lands in the same bucket, so one
conversation never switches versions halfway, and with a uniform hash the share of principals
in buckets below `weight` is `weight` percent (tests/server/engine/test_canary.py measures it
over 2000 names). Raising the weight only adds principals to the canary: nobody moves back.

The split is by principal, not by request: a single principal sending most of the traffic gets
one version for all of it (docs/build.md, "Canary releases", known limits).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

BUCKETS = 100


def bucket(principal: str) -> int:
    """The principal's bucket in 0..99 (stable across processes and releases: sha256)."""
    digest = hashlib.sha256(principal.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Route:
    """The versions a model serves now: the stable one, and a canary for `weight` percent."""

    model: str
    stable: int
    canary: int | None = None
    weight: int = 0  # percent of principals on the canary; 0 without one
    # Name the stable version even without a canary: an ended canary is still unloading, and
    # Triton's policy would send requests that name no version to it (the highest loaded).
    explicit: bool = False

    def version_for(self, principal: str) -> int:
        """The version that answers `principal`."""
        if self.canary is not None and bucket(principal) < self.weight:
            return self.canary
        return self.stable

    def engine_version(self, principal: str) -> str:
        """The ModelInferRequest `model_version` to send: "" without a canary (Triton's policy
        picks the one loaded version, as before canaries existed, so a plain switch keeps
        working as model_versions.py describes); the chosen version while both are loaded."""
        if self.canary is None and not self.explicit:
            return ""
        return str(self.version_for(principal))

    def served(self) -> tuple[int, ...]:
        """Every version loaded for this model (the bounded values of a metric label)."""
        return (self.stable,) if self.canary is None else (self.stable, self.canary)


class VersionedEngine:
    """An EngineClient whose generation requests all name one model version (the routed one).

    Wraps the façade's one client for one call: everything else (health, the LoRA task book,
    endpoints) is the wrapped client's own."""

    def __init__(self, engine: Any, version: str) -> None:
        self._engine = engine
        self.version = version

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def stream_into(self, request: Any, *args: Any, **kwargs: Any) -> None:
        await self._engine.stream_into(
            replace(request, model_version=self.version), *args, **kwargs
        )

    async def stream_text_into(self, request: Any, *args: Any, **kwargs: Any) -> None:
        await self._engine.stream_text_into(
            replace(request, model_version=self.version), *args, **kwargs
        )
