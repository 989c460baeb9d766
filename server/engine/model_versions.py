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

GPU memory (build_engine/switch_plan.py): before a switch, `plan_switch` decides from both
manifests, the GPU's memory and the configured fractions whether the new version fits beside the
old one. When it does not (a `tensorrt_llm` engine at the default kv_cache_free_gpu_mem_fraction
0.9 never does), the switch unloads first: RepositoryModelUnload, after which Triton refuses new
requests for the model and lets the in-flight ones finish; we wait for the old version to leave
UNLOADING, at most `SwitchPolicy.drain_timeout_s` (then load anyway, logged), and load the new
one. During that gap the façade answers UNAVAILABLE ("engine unavailable": Triton's NOT_FOUND /
UNAVAILABLE for an unloaded model, engine/client.py), which clients retry. If the new version
then fails to load, the old one is loaded again before VersionRefused is raised. The decision is
logged either way; CPU engines keep loading beside.

Canaries (canary_records.py `Canary`, server/engine/canary.py routes the calls): after the stable
version of a model is in place, a canary recorded for it is loaded as its own Triton model,
`<model>__canary` (canary_records.py `write_canary_alias`: a directory whose one version links to
the installed one), with the canary version's own config. Not as a second version of the same
model: Triton gives a model one config for all its versions, and the tensorrt_llm backend reads
one `gpt_model_path` and one `kv_cache_free_gpu_mem_fraction` per config. As its own model the
canary keeps its engine path, its instance count and, when canary_fit.py reduces it to fit
beside the stable executor, its own KV fraction; the stable model keeps exactly one version, so
requests and health probes that name no version reach it. Ending a canary is an unload of that
model: Triton refuses new requests for it and lets in-flight ones finish (no principal is
routed to it any more). Promoting it is a plain switch of the model to the canary's version,
then the canary model's unload; on a GPU the canary is unloaded first, since its memory is not
in the switch's plan.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.canary_fit import (
    CanaryFit,
    SharedFractions,
    plan_canary,
    request_mismatch,
    share_kv,
)
from autoglm.build_engine.canary_records import (
    Canary,
    canary_alias,
    read_canaries,
    remove_canary,
    write_canary_alias,
)
from autoglm.build_engine.switch_plan import (
    Footprint,
    Mode,
    SwitchPlan,
    SwitchPolicy,
    plan_switch,
)
from autoglm.build_engine.version_plan import (
    Candidate,
    Decision,
    Override,
    OverrideError,
    merge_overrides,
    plan_loads,
    read_pins,
    scan_repository,
)
from autoglm.server.engine.canary import Route
from autoglm.server.engine.client import EngineClient, ModelControlError
from autoglm.server.engine.version_config import (
    VersionRefused,
    triton_config_json,
    version_footprint,
)

log = logging.getLogger("autoglm.server.engine.model_versions")


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
    # The kv_cache_free_gpu_mem_fraction it was loaded with when planned (a reduced switch, a
    # canary, a stable version sharing with its canary); None: its config's own.
    kv_fraction: float | None = None


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
        switch_policy: SwitchPolicy | None = None,
        footprint_for_tests: Callable[[Candidate], Footprint] | None = None,
    ) -> None:
        """`footprint_for_tests` is a TEST STAND-IN for version_footprint: it lets a CPU
        version look like a GPU engine so that the real plan decides "unload first"."""
        self.repo = repo
        self.engine = engine
        self.hardware = hardware
        self.overrides = tuple(overrides)
        self._verify = verify
        self.switch_policy = switch_policy if switch_policy is not None else SwitchPolicy()
        self.switch_policy.validate()
        self.footprint_for_tests = footprint_for_tests
        self.loaded: dict[str, LoadedVersion] = {}
        # Per model: the canary loaded beside the stable version (as the Triton model
        # canary_alias(model)), and its weight (percent).
        self.canaries: dict[str, tuple[LoadedVersion, int]] = {}
        # The canary records of the current select_and_load, and per model the KV split planned
        # when its stable version was loaded with room left for the canary (share_kv).
        self._records: dict[str, Canary] = {}
        self._shared: dict[str, tuple[int, SharedFractions]] = {}
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

    def route(self, model: str) -> Route | None:
        """The versions `model` serves now (None: not loaded from this repository)."""
        stable = self.loaded.get(model)
        if stable is None:
            return None
        canary = self.canaries.get(model)
        if canary is None:
            return Route(model, stable.version)
        return Route(model, stable.version, canary[0].version, canary[1], canary_alias(model))

    def profile(self, model: str, version: int) -> mf.Profile | None:
        """The build profile of `model` `version` when this process serves it (stable or
        canary)."""
        stable = self.loaded.get(model)
        if stable is not None and stable.version == version:
            return stable.manifest.profile
        canary = self.canaries.get(model)
        if canary is not None and canary[0].version == version:
            return canary[0].manifest.profile
        return None

    def routes(self) -> dict[str, Route]:
        return {m: r for m in self.loaded if (r := self.route(m)) is not None}

    async def rollback(self, model: str, reason: str) -> int | None:
        """End `model`'s canary now (the rollback guard): its record removed, so that a reload
        does not bring it back, and the stable version loaded alone. The canary's version, or
        None when there was none."""
        async with self._lock:
            canary = self.canaries.get(model)
            if canary is None:
                return None
            await asyncio.to_thread(remove_canary, self.repo, model)
            log.warning("%s: canary version %d rolled back: %s", model, canary[0].version, reason)
            await self._end_canary(model)
            return canary[0].version

    async def follow_records(self) -> list[tuple[str, int]]:
        """End the canaries this process serves whose record is gone or names another version:
        another façade process's rollback guard, or an operator's `--rollback` without a
        SIGHUP to this process. The rollback guard calls it every check, so every process's
        routes follow the repository within one check interval (a principal routed meanwhile
        to a canary another process unloaded gets UNAVAILABLE). The ended (model, version)s."""
        if not self.canaries:
            return []
        ended: list[tuple[str, int]] = []
        async with self._lock:
            try:
                records = await asyncio.to_thread(read_canaries, self.repo)
            except OverrideError as exc:
                log.error("canary records unreadable, canaries unchanged: %s", exc)
                return []
            for model, (canary, _) in sorted(self.canaries.items()):
                record = records.get(model)
                if record is not None and record.version == canary.version:
                    continue
                log.warning(
                    "%s: canary version %d no longer recorded in %s: ending it here",
                    model,
                    canary.version,
                    self.repo / model,
                )
                try:
                    await self._end_canary(model)
                except VersionRefused as exc:
                    log.error("%s", exc)
                ended.append((model, canary.version))
        return ended

    async def select_and_load(self) -> dict[str, LoadedVersion]:
        """Start-up and reload: the best verified version of every model, loaded.

        A model whose candidates are all refused keeps its loaded version (reload) and the refusal
        is logged; VersionRefused (after the other models are done) if one has nothing serving.
        """
        failures: list[VersionRefused] = []
        async with self._lock:
            decisions = await asyncio.to_thread(self.plan)
            canaries = await asyncio.to_thread(read_canaries, self.repo)
            self._records = canaries
            for decision in decisions:
                try:
                    await self._apply(decision)
                except VersionRefused as exc:
                    if exc.model in self.loaded:
                        log.error("%s; %s keeps serving", exc, _label(self.loaded[exc.model]))
                    else:
                        failures.append(exc)
                    continue
                try:
                    await self._sync_canary(decision.model, canaries.get(decision.model))
                except VersionRefused as exc:
                    log.error("%s; %s serves alone", exc, _label(self.loaded[decision.model]))
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

    async def _sync_canary(self, model: str, record: Canary | None) -> None:
        """Load, re-weight or end `model`'s canary so that it matches `record`."""
        stable = self.loaded[model]
        current = self.canaries.get(model)
        alias = canary_alias(model)
        if record is None or record.version == stable.version:
            if record is not None:
                log.warning(
                    "%s: canary version %d is the stable one: ignored", model, record.version
                )
            if current is not None:  # ended, or promoted (the switch made it the stable one)
                await self._end_canary(model)
            return
        if (
            current is not None
            and current[0].version == record.version
            and await self.engine.model_ready(alias, version=str(record.version))
        ):
            self.canaries[model] = (current[0], record.weight)
            return
        if current is not None:  # another version: nobody routed to it while it is replaced
            del self.canaries[model]
        candidate = next(
            (c for c in await asyncio.to_thread(scan_repository, self.repo)
             if c.model == model and c.version == record.version),
            None,
        )  # fmt: skip
        if candidate is None or candidate.manifest is None:
            why = candidate.error if candidate else "not installed"
            raise VersionRefused(model, record.version, f"{model} canary {record.version}: {why}")
        try:
            manifest = await asyncio.to_thread(self._verify, candidate.path)
        except mf.ManifestError as exc:
            raise VersionRefused(
                model, record.version, f"{candidate.label} refused as a canary: {exc}"
            ) from None
        if (why := request_mismatch(stable.manifest, manifest)) is not None:
            raise VersionRefused(
                model,
                record.version,
                f"{candidate.label} cannot run as a canary beside version {stable.version}: {why}",
            )
        if current is None and await self.engine.model_ready(alias, version=str(record.version)):
            # Loaded by another façade process on this Triton (`--workers`), or by this one
            # before a restart: served as it is (loading it again would reload the executor).
            self.canaries[model] = (
                LoadedVersion(model, record.version, manifest.profile_id, candidate.path,
                              manifest, 0.0),
                record.weight,
            )  # fmt: skip
            log.info("%s: canary version %d (Triton model %s, already loaded) for %d%% of"
                     " principals", model, record.version, alias, record.weight)  # fmt: skip
            return
        base = Candidate(model, stable.version, stable.path, stable.manifest)
        # Both executors stay loaded while the canary runs: they must fit together on the GPUs.
        shared = self._shared.get(model)
        if shared is not None and shared[0] == record.version:
            # The stable version was loaded leaving this canary its share (share_kv).
            fit = CanaryFit(True, shared[1].reason, shared[1].canary)
        else:
            try:
                fit = await asyncio.to_thread(
                    lambda: plan_canary(
                        self._footprint(base, stable.kv_fraction),
                        self._footprint(candidate),
                        self.switch_policy,
                    )
                )
            except (ValueError, OSError) as exc:
                raise VersionRefused(
                    model,
                    record.version,
                    f"{candidate.label}: cannot plan the canary's fit: {exc}",
                ) from None
        if not fit.fits:
            raise VersionRefused(model, record.version, f"{candidate.label}: {fit.reason}")
        try:
            await asyncio.to_thread(write_canary_alias, self.repo, model, record.version)
        except (OverrideError, OSError) as exc:
            raise VersionRefused(
                model, record.version, f"{candidate.label}: cannot make its canary model: {exc}"
            ) from None
        config = triton_config_json(
            candidate, self.repo / model, kv_fraction=fit.fraction, name=alias
        )
        started = time.monotonic()
        try:
            await self.engine.load_model(alias, config_json=config)
        except ModelControlError as exc:
            raise VersionRefused(
                model, record.version, f"{candidate.label} refused by Triton as a canary: {exc}"
            ) from None
        if not await self.engine.model_ready(alias, version=str(record.version), timeout=10):
            raise VersionRefused(
                model, record.version, f"{alias} version {record.version}: loaded but not READY"
            )
        seconds = time.monotonic() - started
        loaded = LoadedVersion(
            model,
            record.version,
            manifest.profile_id,
            candidate.path,
            manifest,
            seconds,
            kv_fraction=fit.fraction,
        )
        self.canaries[model] = (loaded, record.weight)
        log.info(
            "%s: canary version %d (Triton model %s) for %d%% of principals beside version %d"
            " (loaded in %.1f s; %s)",
            model,
            record.version,
            alias,
            record.weight,
            stable.version,
            seconds,
            fit.reason,
        )

    async def _end_canary(self, model: str, *, wait: bool = False) -> None:
        """Unload `model`'s canary model: no principal is routed to it from now on, and Triton
        lets its in-flight requests finish. With `wait`, until Triton has freed it (at most
        the drain timeout)."""
        canary, _ = self.canaries.pop(model)
        alias = canary_alias(model)
        started = time.monotonic()
        try:
            await self.engine.unload_model(alias, timeout=self.switch_policy.drain_timeout_s)
        except ModelControlError as exc:
            if exc.code is None or exc.code.name != "DEADLINE_EXCEEDED":
                raise VersionRefused(
                    model, canary.version, f"{model}: unloading canary {alias} failed: {exc}"
                ) from None
        log.info("%s: canary version %d ended; version %d alone", model, canary.version,
                 self.loaded[model].version)  # fmt: skip
        if wait:
            await self._wait_unloaded(alias, canary.version, started)

    async def _wait_unloaded(self, name: str, version: int, started: float) -> None:
        """Wait until Triton has unloaded `name` version `version` (its last request done), at
        most the drain timeout from `started` (then logged: the caller goes on)."""
        timeout = self.switch_policy.drain_timeout_s
        while True:
            index = await self.engine.repository_index()
            state = next(
                (e.state for e in index if e.name == name and e.version == str(version)), None
            )
            waited = time.monotonic() - started
            if state not in ("READY", "UNLOADING"):
                log.info("%s version %d drained and unloaded in %.1f s", name, version, waited)
                return
            if waited >= timeout:
                log.warning(
                    "%s version %d still %s after the %.0f s drain timeout; going on",
                    name,
                    version,
                    state,
                    timeout,
                )
                return
            await asyncio.sleep(0.2)

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
        if c.model in self.canaries and await asyncio.to_thread(self._canary_on_gpu, c.model):
            # The canary's GPU memory is not in the switch's plan: end it first (its record
            # stays; the next reload loads it again beside the new version if it still fits).
            log.info("%s: ending the canary before switching to version %d", c.model, c.version)
            await self._end_canary(c.model, wait=True)
        try:
            plan = await asyncio.to_thread(self._plan_switch, current, c)
        except (ValueError, OSError) as exc:  # e.g. an unknown engine kind, a missing file
            raise VersionRefused(
                c.model, c.version, f"{c.label} refused: cannot plan the switch: {exc}"
            ) from None
        if current is not None:
            log.info(
                "%s -> version %d: %s (%s)", _label(current), c.version, plan.mode, plan.reason
            )
        fraction = plan.fraction
        shared = await self._plan_shared(c) if current is None else None
        if shared is not None:
            fraction = shared[1].stable
        config = triton_config_json(c, self.repo / c.model, kv_fraction=fraction)
        if plan.mode is not Mode.UNLOAD_FIRST or current is None:
            loaded = await self._load_config(c, manifest, config, refused, current, fraction)
            if shared is not None:
                self._shared[c.model] = shared
                log.info("%s: %s", c.label, shared[1].reason)
            else:
                self._shared.pop(c.model, None)
            return loaded
        await self._drain(current)
        self._shared.pop(c.model, None)
        try:
            return await self._load_config(c, manifest, config, refused, current, fraction)
        except VersionRefused as exc:
            await self._restore(current, exc)
            raise  # _restore raises; this line only tells the type checker

    def _footprint(self, c: Candidate, kv_fraction: float | None = None) -> Footprint:
        """What `c` takes per GPU; `kv_fraction`: the fraction it was loaded with, if planned."""
        if self.footprint_for_tests is not None:
            footprint = self.footprint_for_tests(c)
        else:
            footprint = version_footprint(c, self.repo / c.model, self.hardware)
        if kv_fraction is not None and footprint.kind == "tensorrt_llm":
            footprint = dataclasses.replace(footprint, fraction=kv_fraction)
        return footprint

    async def _plan_shared(self, c: Candidate) -> tuple[int, SharedFractions] | None:
        """When `c` loads first and a canary is recorded for its model: the KV split that leaves
        the canary room (share_kv), or None (the canary is then planned on its own)."""
        record = self._records.get(c.model)
        if record is None or record.version == c.version:
            return None
        canary = next(
            (x for x in await asyncio.to_thread(scan_repository, self.repo)
             if x.model == c.model and x.version == record.version and x.manifest is not None),
            None,
        )  # fmt: skip
        if canary is None:
            return None
        try:
            shared = await asyncio.to_thread(
                lambda: share_kv(
                    self._footprint(c), self._footprint(canary), record.weight, self.switch_policy
                )
            )
        except (ValueError, OSError) as exc:
            log.warning("%s: KV not shared with canary %d: %s", c.label, record.version, exc)
            return None
        return None if shared is None else (record.version, shared)

    def _canary_on_gpu(self, model: str) -> bool:
        canary = self.canaries[model][0]
        return self._footprint(
            Candidate(model, canary.version, canary.path, canary.manifest)
        ).on_gpu

    def _plan_switch(self, current: LoadedVersion | None, c: Candidate) -> SwitchPlan:
        old = None
        if current is not None:
            old = self._footprint(
                Candidate(current.model, current.version, current.path, current.manifest),
                current.kv_fraction,
            )
        return plan_switch(old, self._footprint(c), self.switch_policy)

    async def _drain(self, current: LoadedVersion) -> None:
        """Unload `current` and wait, up to the drain timeout, for Triton to finish it.

        Triton refuses new requests for the model from the unload on and lets the in-flight
        ones complete; the version leaves UNLOADING when the last one has (its memory freed).
        """
        started = time.monotonic()
        try:
            await self.engine.unload_model(
                current.model, timeout=self.switch_policy.drain_timeout_s
            )
        except ModelControlError as exc:
            if exc.code is None or exc.code.name != "DEADLINE_EXCEEDED":
                raise VersionRefused(
                    current.model,
                    current.version,
                    f"{_label(current)} could not be unloaded to make room: {exc}",
                ) from None
        await self._wait_unloaded(current.model, current.version, started)

    async def _restore(self, current: LoadedVersion, failure: VersionRefused) -> None:
        """The new version failed after the old one was unloaded: load the old one again."""
        c = Candidate(current.model, current.version, current.path, current.manifest)
        try:
            config = triton_config_json(c, self.repo / c.model, kv_fraction=current.kv_fraction)
            await self.engine.load_model(current.model, config_json=config)
            ready = await self.engine.model_ready(
                current.model, version=str(current.version), timeout=10
            )
        except ModelControlError as exc:
            ready, failure_again = False, str(exc)
        else:
            failure_again = "loaded but not READY"
        if ready:
            log.error("%s; %s reloaded and serving", failure, _label(current))
            raise VersionRefused(
                failure.model, failure.version, f"{failure}; {_label(current)} reloaded"
            ) from None
        del self.loaded[current.model]
        log.error("%s; reloading %s failed too: %s", failure, _label(current), failure_again)
        raise VersionRefused(
            failure.model,
            failure.version,
            f"{failure}; reloading {_label(current)} failed too ({failure_again}): "
            f"{current.model} is not loaded",
        ) from None

    async def _load_config(
        self,
        c: Candidate,
        manifest: mf.Manifest,
        config: str,
        refused: tuple[str, ...],
        current: LoadedVersion | None,
        kv_fraction: float | None = None,
    ) -> LoadedVersion:
        assert c.version is not None
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
            c.model, c.version, manifest.profile_id, c.path, manifest, seconds, refused, kv_fraction
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
