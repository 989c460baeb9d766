"""Select, verify and load exactly one version per model into Triton; switch while serving.

Triton runs with `--model-control-mode=explicit` (triton_process.py). Each load is a
RepositoryModelLoad whose `config` parameter is the version's own rendered config
(manifest.VERSION_CONFIG, else the model's config.pbtxt) with
`version_policy { specific { versions: [N] } }` (Triton's model_config.proto; the override JSON
replaces config.pbtxt for that load: Triton's model_repository protocol extension).

What Triton 2.51 did here (tests/integration/test_model_versions.py, docs/build.md):
- a policy naming an absent version is refused ("at least one version must be available under
  the version policy") and the loaded version keeps serving;
- loading version N while version M serves returns once N is READY; M turns UNLOADING and a
  stream already running on M completes with all its tokens; requests without a version go to N.

Checksums (manifest.verify) are checked just before every load, so a corrupted or swapped file is
refused before Triton sees it, and a refused version never replaces the loaded one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.version_plan import (
    Candidate,
    Decision,
    Override,
    merge_overrides,
    plan_loads,
    read_pins,
    scan_repository,
)
from autoglm.server.engine.client import EngineClient, ModelControlError

log = logging.getLogger("autoglm.server.engine.model_versions")


class VersionRefused(RuntimeError):
    """A version was not loaded; the message names model, version and reason."""

    def __init__(self, model: str, version: int | None, reason: str) -> None:
        super().__init__(reason)
        self.model = model
        self.version = version


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    model: str
    version: int
    profile_id: str
    path: Path
    manifest: mf.Manifest
    load_seconds: float  # 0.0 when it was already loaded
    # Better-ranked versions refused on the way (checksums, Triton's own load error).
    refused: tuple[str, ...] = ()


def triton_config_json(candidate: Candidate, model_root: Path) -> str:
    """The config override: this version's config with a policy of exactly this version."""
    own = candidate.path / mf.VERSION_CONFIG
    path = own if own.is_file() else model_root / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    if config.name and config.name != candidate.model:
        raise VersionRefused(
            candidate.model,
            candidate.version,
            f"{candidate.label}: {path} names model {config.name!r}",
        )
    config.name = candidate.model
    config.version_policy.specific.versions[:] = [candidate.version]
    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)


class ModelVersions:
    """The versions this process loaded into one Triton; one instance per façade."""

    def __init__(
        self,
        repo: Path,
        engine: EngineClient,
        *,
        hardware: mf.Hardware,
        overrides: Sequence[Override] = (),
        verify: Callable[[Path], mf.Manifest] = mf.verify,
    ) -> None:
        self.repo = repo
        self.engine = engine
        self.hardware = hardware
        self.overrides = tuple(overrides)
        self._verify = verify
        self.loaded: dict[str, LoadedVersion] = {}
        self._lock = asyncio.Lock()  # one load/switch at a time (Triton loads one by one anyway)

    def plan(self, overrides: Sequence[Override] | None = None) -> list[Decision]:
        """The decisions for the repository as it is now (its pins read afresh)."""
        given = self.overrides if overrides is None else overrides
        candidates = scan_repository(self.repo)
        return plan_loads(
            candidates,
            self.hardware,
            merge_overrides(given, read_pins(self.repo), candidates),
        )

    async def select_and_load(self) -> dict[str, LoadedVersion]:
        """Start-up and reload: the best verified version of every model, loaded.

        A model whose candidates are all refused keeps its loaded version (reload) and the refusal
        is logged; VersionRefused (after the other models are done) if one has nothing serving.
        """
        failures: list[VersionRefused] = []
        async with self._lock:
            for decision in await asyncio.to_thread(self.plan):
                try:
                    await self._apply(decision)
                except VersionRefused as exc:
                    if exc.model in self.loaded:
                        log.error("%s; %s keeps serving", exc, _label(self.loaded[exc.model]))
                    else:
                        failures.append(exc)
        if failures:
            raise (
                failures[0]
                if len(failures) == 1
                else VersionRefused("*", None, "; ".join(str(f) for f in failures))
            )
        return dict(self.loaded)

    async def switch(self, model: str, version: int) -> LoadedVersion:
        """Verify, then load `version` of `model` in place of the loaded one.

        VersionRefused (naming model, version, reason) leaves the loaded version serving.
        """
        async with self._lock:
            decisions = await asyncio.to_thread(self.plan, [Override(model, version=version)])
            decision = next(d for d in decisions if d.model == model)
            return await self._apply(decision, fallback=False)

    async def _apply(self, decision: Decision, *, fallback: bool = True) -> LoadedVersion:
        model = decision.model
        if not decision.ranked:
            raise VersionRefused(model, None, decision.error or f"{model}: nothing to load")
        refused: list[str] = []
        for candidate in decision.ranked if fallback else decision.ranked[:1]:
            try:
                return await self._load(candidate, tuple(refused))
            except VersionRefused as exc:
                log.error("%s", exc)
                refused.append(str(exc))
        version = decision.ranked[0].version
        raise VersionRefused(model, version, "; ".join(refused))

    async def _load(self, c: Candidate, refused: tuple[str, ...]) -> LoadedVersion:
        assert c.version is not None and c.manifest is not None  # scan_repository candidates
        try:
            manifest = await asyncio.to_thread(self._verify, c.path)
        except mf.ManifestError as exc:
            raise VersionRefused(c.model, c.version, f"{c.label} refused: {exc}") from None
        if manifest.profile_id != c.manifest.profile_id:
            raise VersionRefused(
                c.model, c.version, f"{c.label} refused: its manifest changed while selecting"
            )
        current = self.loaded.get(c.model)
        if (
            current is not None
            and current.version == c.version
            and await self.engine.model_ready(c.model, version=str(c.version))
        ):
            return current  # already serving: nothing to do
        config = triton_config_json(c, self.repo / c.model)
        started = time.monotonic()
        try:
            await self.engine.load_model(c.model, config_json=config)
        except ModelControlError as exc:
            raise VersionRefused(
                c.model, c.version, f"{c.label} refused by Triton: {exc}"
            ) from None
        seconds = time.monotonic() - started
        if not await self.engine.model_ready(c.model, version=str(c.version), timeout=10):
            raise VersionRefused(c.model, c.version, f"{c.label}: loaded but not READY")
        loaded = LoadedVersion(
            c.model, c.version, manifest.profile_id, c.path, manifest, seconds, refused
        )
        previous = f" (was version {current.version})" if current else ""
        log.info("%s %s loaded in %.1f s%s", c.label, manifest.profile_id, seconds, previous)
        self.loaded[c.model] = loaded
        return loaded


def _label(v: LoadedVersion) -> str:
    return f"{v.model} version {v.version}"


async def select_and_load(
    repo: Path,
    engine: EngineClient,
    *,
    hardware: mf.Hardware | None = None,
    override: Sequence[Override] = (),
) -> dict[str, LoadedVersion]:
    """One-shot form of ModelVersions(...).select_and_load() (hardware: detected when None)."""
    hw = hardware if hardware is not None else await asyncio.to_thread(mf.detect_hardware)
    return await ModelVersions(repo, engine, hardware=hw, overrides=override).select_and_load()
