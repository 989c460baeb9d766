"""Which installed version of each model to serve: a pure decision over manifests + hardware.

A Triton model repository built by `autoglm build install` holds `<repo>/<model>/<N>/` version
directories, each with manifest.json (build_engine/manifest.py). Per model, `plan_loads` ranks
the versions with the build stage's own `select_profile` (NIM order: compatible with this host →
lower precision → fewer GPUs; the same function `autoglm build list-profiles` uses), newest
version first among identical profiles, and gives every other version a one-line reason.
An override (an explicit profile id or version) narrows the choice but is never ignored: if
what it names is missing or incompatible, the decision is an error, not a silent fallback.

A repository may also *pin* a model: `<repo>/<model>/pin.json` (`{"version": N}` or
`{"profile_id": "…"}`), written by `autoglm build activate` and read at start-up and on every
reload (SIGHUP). A pin is an override like `--profile`; a `--profile` given for the same model
wins. This is how an operator switches the served version without a restart.

A model may also run a *canary* beside the version it serves: its record and its own Triton
model directory are canary_records.py's.

Only `scan_repository` / `scan_roots` / `read_pins` / `write_pin` / `remove_pin` touch the disk
(they read manifests; checksums are verified later, just before loading: model_versions.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoglm.build_engine import manifest as mf


class OverrideError(ValueError):
    """An override that is malformed or names nothing installed."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One installed version (or, outside a repository, one manifest-holding folder)."""

    model: str  # the Triton model name (its directory in the repository)
    version: int | None  # None outside a repository (e.g. a build's engine dir)
    path: Path
    manifest: mf.Manifest | None
    error: str | None = None  # why the manifest could not be read

    @property
    def label(self) -> str:
        return f"{self.model} version {self.version}" if self.version else f"{self.path}"


@dataclass(frozen=True, slots=True)
class Override:
    """`--profile` for one model (model=None: whichever model holds that profile id)."""

    model: str | None = None
    profile_id: str | None = None
    version: int | None = None

    def describe(self) -> str:
        return (
            f"version {self.version}" if self.version is not None else f"profile {self.profile_id}"
        )


@dataclass(frozen=True, slots=True)
class Decision:
    model: str
    # Compatible candidates, best first; the first one is loaded unless its checksums fail.
    ranked: tuple[Candidate, ...]
    # Every candidate but the first, with why it is not the one loaded (fallbacks included).
    rejected: tuple[tuple[Candidate, str], ...]
    error: str | None = None  # set when nothing can be loaded

    @property
    def chosen(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None


_OVERRIDE = re.compile(r"^(?:(?P<model>[A-Za-z0-9_.-]+)(?P<sep>[=@]))?(?P<value>[A-Za-z0-9]+)$")


def parse_override(text: str) -> Override:
    """`PROFILE_ID`, `MODEL=PROFILE_ID` or `MODEL@VERSION`."""
    m = _OVERRIDE.match(text.strip())
    if m is None or (m["sep"] == "@" and not m["value"].isdigit()):
        raise OverrideError(
            f"--profile {text!r}: expected PROFILE_ID, MODEL=PROFILE_ID or MODEL@VERSION"
        )
    if m["sep"] == "@":
        return Override(model=m["model"], version=int(m["value"]))
    return Override(model=m["model"], profile_id=m["value"])


# ---- reading the repository (I/O) ----------------------------------------------------------


def _candidate(model: str, version: int | None, path: Path) -> Candidate:
    try:
        return Candidate(model, version, path, mf.read(path))
    except mf.ManifestError as exc:
        return Candidate(model, version, path, None, str(exc))


def _versions(model_dir: Path) -> list[Path]:
    # Triton takes numeric sub-directories as versions; `.staging-*` (install.py) are skipped.
    return sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )


def scan_repository(repo: Path) -> list[Candidate]:
    """Every version directory of every model in a Triton model repository."""
    out: list[Candidate] = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        if model_dir.name.startswith(".") or is_canary_alias(model_dir):
            continue
        out += [_candidate(model_dir.name, int(v.name), v) for v in _versions(model_dir)]
    return out


def scan_roots(roots: Iterable[Path]) -> list[Candidate]:
    """For list-profiles: repositories, model dirs, version dirs or any dir holding manifests."""
    out: list[Candidate] = []
    for root in roots:
        if (root / mf.MANIFEST).is_file():
            versioned = root.name.isdigit()
            model = root.parent.name if versioned else root.name
            out.append(_candidate(model, int(root.name) if versioned else None, root))
        elif any((v / mf.MANIFEST).is_file() for v in _versions(root)):
            out += [_candidate(root.name, int(v.name), v) for v in _versions(root)]
        elif any(_versions(d) for d in root.iterdir() if d.is_dir()):
            out += scan_repository(root)
        else:
            for path in sorted(root.rglob(mf.MANIFEST)):
                c = _candidate(path.parent.name, None, path.parent)
                model = c.manifest.profile.model if c.manifest else path.parent.name
                out.append(Candidate(model, None, c.path, c.manifest, c.error))
    return out


PIN = "pin.json"


def read_pins(repo: Path) -> list[Override]:
    """The pins of a repository (OverrideError naming the file when one is malformed)."""
    out: list[Override] = []
    for pin in sorted(repo.glob(f"*/{PIN}")):
        model = pin.parent.name
        try:
            data = json.loads(pin.read_text())
            version, profile_id = data.get("version"), data.get("profile_id")
            if (version is None) == (profile_id is None):
                raise ValueError("give exactly one of version, profile_id")
            if version is not None and (type(version) is not int or version < 1):
                raise ValueError(f"version must be a positive integer, got {version!r}")
            if profile_id is not None and not (
                isinstance(profile_id, str) and profile_id.isalnum()
            ):
                raise ValueError(f"profile_id must be alphanumeric, got {profile_id!r}")
        except (OSError, ValueError, AttributeError) as exc:
            raise OverrideError(f"{pin}: {exc}") from None
        out.append(Override(model=model, version=version, profile_id=profile_id))
    return out


def write_pin(repo: Path, override: Override) -> Path:
    """Pin `override.model` to a version or profile (atomic replace); returns the file."""
    if override.model is None:
        raise OverrideError("pin: name the model")
    model_dir = repo / override.model
    if not model_dir.is_dir():
        raise OverrideError(f"pin: no model {override.model!r} in {repo}")
    data = (
        {"version": override.version}
        if override.version is not None
        else {"profile_id": override.profile_id}
    )
    path = model_dir / PIN
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)
    return path


def remove_pin(repo: Path, model: str) -> bool:
    """Unpin (the best version is served again after the next reload); False if none."""
    path = repo / model / PIN
    if not path.is_file():
        return False
    path.unlink()
    return True


# A running canary's own Triton model directory (canary_records.py `write_canary_alias`) is
# marked by this file: scans skip it.
ALIAS_MARK = "canary-of.json"


def is_canary_alias(model_dir: Path) -> bool:
    return (model_dir / ALIAS_MARK).is_file()


# ---- the decision (pure) -------------------------------------------------------------------


def merge_overrides(
    given: Sequence[Override], pins: Sequence[Override], candidates: Iterable[Candidate]
) -> list[Override]:
    """`given` (command line) plus the pins of the models that `given` does not cover."""
    by_model: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_model.setdefault(c.model, []).append(c)

    def covered(model: str | None) -> bool:
        ids = _profile_ids(by_model.get(model or "", ()))
        return any(o.model == model or (o.model is None and o.profile_id in ids) for o in given)

    return [*given, *(p for p in pins if not covered(p.model))]


def plan_loads(
    candidates: Iterable[Candidate],
    hardware: mf.Hardware,
    overrides: Sequence[Override] = (),
) -> list[Decision]:
    """One Decision per model (sorted by name). OverrideError if an override names nothing."""
    by_model: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_model.setdefault(c.model, []).append(c)
    _check_overrides(by_model, overrides)
    return [
        _decide(model, cands, hardware, _override_for(model, cands, overrides))
        for model, cands in sorted(by_model.items())
    ]


def _profile_ids(cands: Iterable[Candidate]) -> set[str]:
    return {c.manifest.profile_id for c in cands if c.manifest is not None}


def _override_for(
    model: str, cands: Sequence[Candidate], overrides: Sequence[Override]
) -> Override | None:
    mine = [
        o
        for o in overrides
        if o.model == model or (o.model is None and o.profile_id in _profile_ids(cands))
    ]
    if len(mine) > 1:
        raise OverrideError(
            f"{model}: several overrides apply ({', '.join(o.describe() for o in mine)})"
        )
    return mine[0] if mine else None


def _check_overrides(by_model: dict[str, list[Candidate]], overrides: Sequence[Override]) -> None:
    for o in overrides:
        if o.model is not None and o.model not in by_model:
            raise OverrideError(
                f"override {o.model}: no such model in the repository "
                f"(models: {', '.join(sorted(by_model)) or 'none'})"
            )
        if o.model is None and not any(o.profile_id in _profile_ids(c) for c in by_model.values()):
            raise OverrideError(f"override: no installed version has profile {o.profile_id}")


def _matches(c: Candidate, o: Override) -> bool:
    if o.version is not None:
        return c.version == o.version
    return c.manifest is not None and c.manifest.profile_id == o.profile_id


def _decide(
    model: str, cands: list[Candidate], hardware: mf.Hardware, override: Override | None
) -> Decision:
    rejected: list[tuple[Candidate, str]] = []
    readable: list[Candidate] = []
    # Newest first: select_profile is stable, so among identical profiles the newest wins.
    for c in sorted(cands, key=lambda c: -(c.version or 0)):
        if c.manifest is None:
            rejected.append((c, f"unreadable manifest: {c.error}"))
        elif override is not None and not _matches(c, override):
            rejected.append((c, f"not the requested {override.describe()}"))
        else:
            readable.append(c)
    if override is not None and not readable:
        unreadable = [c for c, _ in rejected if _matches(c, override)]
        why = f": {unreadable[0].error}" if unreadable else " is not installed"
        return Decision(
            model, (), tuple(rejected), f"{model}: the requested {override.describe()}{why}"
        )
    by_id = {id(c.manifest): c for c in readable}
    selection = mf.select_profile([c.manifest for c in readable if c.manifest], hardware)
    ranked: list[Candidate] = []
    if selection.chosen is not None:
        ranked.append(by_id[id(selection.chosen)])
    for m, reason in selection.rejected:
        c = by_id[id(m)]
        if mf.incompatibility(m, hardware) is None:
            ranked.append(c)  # a fallback, should the better ones fail their checksums
            best = ranked[0]
            if best.manifest is not None and m.profile_id == best.manifest.profile_id:
                reason = f"compatible, but the same profile as the newer version {best.version}"
        rejected.append((c, reason))
    error = None
    if not ranked:
        what = (
            f"the requested {override.describe()} cannot"
            if override
            else "no installed version can"
        )
        reasons = [
            f"{c.label}: {r}" for c, r in rejected if override is None or _matches(c, override)
        ]
        error = (
            f"{model}: {what} run on this host ({hardware.describe()}): " + "; ".join(reasons)
            if reasons
            else f"{model}: no installed version"
        )
    return Decision(model, tuple(ranked), tuple(rejected), error)
