"""A canary's record in the model repository, and the Triton model it runs as.

A model may run a *canary* beside the version it serves: `<repo>/<model>/canary.json`
(`{"version": N, "weight": W}`, W in 1..99 percent of the principals), written by
`autoglm build activate MODEL --canary N --weight W`, removed by `--rollback` (the stable version
alone again) or by `--promote` (which pins N: the canary becomes the only version). It is read
with the pins (version_plan.py), at start-up and on every reload (SIGHUP); model_versions.py
loads the canary as its own Triton model beside the stable one (`write_canary_alias`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from autoglm.build_engine.version_plan import (
    ALIAS_MARK,
    Override,
    OverrideError,
    is_canary_alias,
    write_pin,
)

CANARY = "canary.json"


@dataclass(frozen=True, slots=True)
class Canary:
    """A version served to `weight` percent of the principals beside the stable one."""

    model: str
    version: int
    weight: int  # 1..99: percent of principals (server/engine/canary.py routes them)

    def validate(self) -> None:
        if type(self.version) is not int or self.version < 1:
            raise OverrideError(f"canary version must be a positive integer, got {self.version!r}")
        if type(self.weight) is not int or not 1 <= self.weight <= 99:
            raise OverrideError(f"canary weight must be an integer in 1..99, got {self.weight!r}")


def read_canaries(repo: Path) -> dict[str, Canary]:
    """The canaries of a repository by model (OverrideError naming the file when malformed)."""
    out: dict[str, Canary] = {}
    for path in sorted(repo.glob(f"*/{CANARY}")):
        model = path.parent.name
        try:
            data = json.loads(path.read_text())
            canary = Canary(model, data.get("version"), data.get("weight"))
            canary.validate()
        except (OSError, ValueError, AttributeError) as exc:
            raise OverrideError(f"{path}: {exc}") from None
        out[model] = canary
    return out


def write_canary(repo: Path, canary: Canary) -> Path:
    """Record a canary (atomic replace); OverrideError when the version is not installed."""
    canary.validate()
    model_dir = repo / canary.model
    if not model_dir.is_dir():
        raise OverrideError(f"canary: no model {canary.model!r} in {repo}")
    if not (model_dir / str(canary.version)).is_dir():
        raise OverrideError(f"canary: {canary.model} has no installed version {canary.version}")
    path = model_dir / CANARY
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": canary.version, "weight": canary.weight}) + "\n")
    os.replace(tmp, path)
    return path


def remove_canary(repo: Path, model: str) -> Canary | None:
    """End a canary (the stable version alone after the next reload); the removed one, if any."""
    current = read_canaries(repo).get(model)
    if current is not None:
        (repo / model / CANARY).unlink()
    return current


def promote_canary(repo: Path, model: str) -> Canary:
    """The canary becomes the only version: pinned, and the canary record removed."""
    current = read_canaries(repo).get(model)
    if current is None:
        raise OverrideError(f"promote: {model} has no canary")
    write_pin(repo, Override(model, version=current.version))
    (repo / model / CANARY).unlink()
    return current


# A running canary is its own Triton model: `<repo>/<model>__canary/` whose one version
# directory is a relative link to `../<model>/<N>` (so the same files, checksums and engine path,
# whatever path the repository is mounted at), marked by ALIAS_MARK so that scans skip it.
# Why a second model rather than a second version of the same one: Triton gives all the
# versions of a model one config, and the tensorrt_llm backend reads one `gpt_model_path` (and
# one kv_cache_free_gpu_mem_fraction) per config, so two engines cannot be two versions of one
# Triton model (server/engine/model_versions.py).
CANARY_SUFFIX = "__canary"


def canary_alias(model: str) -> str:
    """The Triton model name a canary of `model` is served under."""
    return f"{model}{CANARY_SUFFIX}"


def write_canary_alias(repo: Path, model: str, version: int) -> str:
    """Make `<repo>/<model>__canary/<version>` link to the installed version (other links in
    it removed); its Triton model name. OverrideError when the name is taken by a real model."""
    alias = canary_alias(model)
    target = repo / model / str(version)
    if not target.is_dir():
        raise OverrideError(f"canary: {model} has no installed version {version}")
    root = repo / alias
    if root.is_dir() and not is_canary_alias(root) and any(root.iterdir()):
        raise OverrideError(f"canary: {root} exists and is not a canary alias: rename that model")
    root.mkdir(exist_ok=True)
    mark = root / ALIAS_MARK
    tmp = mark.with_suffix(".tmp")
    tmp.write_text(json.dumps({"model": model, "version": version}) + "\n")
    os.replace(tmp, mark)
    for entry in root.iterdir():
        if entry.name.isdigit() and entry.name != str(version) and entry.is_symlink():
            entry.unlink()
    link = root / str(version)
    if not link.is_symlink():
        link.symlink_to(Path("..") / model / str(version), target_is_directory=True)
    return alias
