"""Which version of a model answers a principal while a canary runs: a pure, sticky choice.

A canary (build_engine/canary_records.py `Canary`) serves `weight` percent of the principals
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
    """The versions a model serves now: the stable one, and a canary for `weight` percent.

    The stable version is the model's one loaded version (requests name neither model nor
    version beyond the model's own Triton name); the canary runs as its own Triton model,
    `canary_model` (build_engine/canary_records.py `canary_alias`), and requests routed to it
    name that model and its version."""

    model: str
    stable: int
    canary: int | None = None
    weight: int = 0  # percent of principals on the canary; 0 without one
    canary_model: str = ""  # the canary's Triton model name

    def version_for(self, principal: str) -> int:
        """The version that answers `principal`."""
        if self.canary is not None and bucket(principal) < self.weight:
            return self.canary
        return self.stable

    def engine_target(self, principal: str) -> tuple[str, str] | None:
        """(Triton model, version) when `principal` goes to the canary; None for the stable
        version (the request as the model built it: Triton's policy picks the one loaded
        version, and a plain switch keeps working as model_versions.py describes)."""
        if self.version_for(principal) == self.stable:
            return None
        return self.canary_model, str(self.canary)

    def served(self) -> tuple[int, ...]:
        """Every version loaded for this model (the bounded values of a metric label)."""
        return (self.stable,) if self.canary is None else (self.stable, self.canary)


class VersionedEngine:
    """An EngineClient whose generation requests all go to one Triton model and version (the
    canary's).

    Wraps the façade's one client for one call: everything else (health, the LoRA task book,
    endpoints) is the wrapped client's own. The LoRA task book is keyed by Triton model, so an
    adapter's weights are sent to the canary's executor on its first request there."""

    def __init__(self, engine: Any, triton_model: str, version: str) -> None:
        self._engine = engine
        self.triton_model = triton_model
        self.version = version

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @property
    def lora_tasks(self) -> _TasksOn:
        """The wrapped client's LoRA task book, for the canary's Triton model: stream_with_lora
        asks it with the request's model (the stable one) before this wrapper retargets it."""
        return _TasksOn(self._engine.lora_tasks, self.triton_model)

    def _target(self, request: Any) -> Any:
        return replace(request, triton_model=self.triton_model, model_version=self.version)

    async def stream_into(self, request: Any, *args: Any, **kwargs: Any) -> None:
        await self._engine.stream_into(self._target(request), *args, **kwargs)

    async def stream_text_into(self, request: Any, *args: Any, **kwargs: Any) -> None:
        await self._engine.stream_text_into(self._target(request), *args, **kwargs)


class _TasksOn:
    """A LoRA task book (engine/lora.py LoraTasks) seen for one Triton model, whatever model
    the caller names."""

    def __init__(self, tasks: Any, model: str) -> None:
        self._tasks = tasks
        self._model = model

    def sent(self, _model: str, task_id: int) -> bool:
        return bool(self._tasks.sent(self._model, task_id))

    def mark_sent(self, _model: str, task_id: int) -> None:
        self._tasks.mark_sent(self._model, task_id)

    def forget(self, _model: str, task_id: int) -> None:
        self._tasks.forget(self._model, task_id)
