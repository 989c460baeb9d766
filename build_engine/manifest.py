"""manifest.json: what an engine (or CPU reference) version is, and which profile to pick.

An engine's own config.json records neither the GPU architecture nor the TensorRT version (both
live only inside rank<N>.engine, facts.md), so the build records them here, with a sha256 of
every file to detect a partial copy or a swapped engine before Triton fails on it.

`select_profile` follows NVIDIA NIM's automatic profile selection order, as this project adopts
it: keep the profiles compatible with the hardware, then prefer lower precision, then fewer GPUs;
every other profile gets a one-line reason (what `list-profiles` prints).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoglm.build_engine.gpus import Detector, GpuInfo, detect_gpus
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.skus import get_sku
from autoglm.triton_models import lora_contract as lc

MANIFEST = "manifest.json"
# The Triton config rendered for this version, kept next to its files (and in its checksums):
# the model root's config.pbtxt is rewritten by every install (a tensorrt_llm config points
# `gpt_model_path` at the newest version dir), so loading an older version needs its own.
VERSION_CONFIG = "triton_config.pbtxt"
SCHEMA_VERSION = 1
# Lower is preferred: bits per weight first, then the activation format (fp8 > int8 SmoothQuant
# > int8 weight-only, which keeps 16-bit activations); fp32 is the CPU reference.
PRECISION_ORDER: Mapping[str, int] = {
    "nvfp4": 0,
    "int4_awq": 1,
    "fp8": 2,
    "int8_sq": 3,
    "int8_wo": 4,
    "fp16": 5,
    "bf16": 5,
    "fp32": 6,
}
# nvidia-smi reports usable memory, a little under the marketed size (81,559 MiB for an
# "80 GB" H100, 23,034 MiB for a "24 GB" L4): accept 90 % of the SKU's memory.
MEMORY_TOLERANCE = 0.9


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match the files next to it."""


@dataclass(frozen=True, slots=True)
class Profile:
    """The fields that identify a build; the profile id is their content hash."""

    model: str
    sku: str
    compute_capability: str
    precision: str
    kv_cache_dtype: str
    tp: int
    pp: int
    max_batch: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    profile: str
    # The Triton backend serving the version: "vllm" for Triton's vLLM backend
    # (build_engine/vllm_profile.py). None on TensorRT-LLM engines and CPU reference versions
    # (see `engine_kind`), and then left out of the dict and the id: every manifest written
    # before this field existed keeps its profile id.
    engine: str | None = None
    # What LoRA adapters a TensorRT-LLM engine accepts: trtllm-build's --max_lora_rank and
    # --lora_target_modules (BuildPlan; 0 / () = built without the LoRA plugin). Left out of the
    # dict and the id when 0 / (), like `engine`: a build without LoRA keeps its profile id and
    # manifest byte for byte, and two engines differing only in LoRA get different ids. The
    # adapter registry refuses adapters these do not cover (adapters.check_engines). The id stays
    # a bare hex hash (no "-lora<rank>" tag): `--profile MODEL=ID` overrides take [A-Za-z0-9]+.
    max_lora_rank: int = 0
    lora_target_modules: tuple[str, ...] = ()

    @classmethod
    def from_plan(cls, plan: BuildPlan) -> Profile:
        sku = get_sku(plan.sku)
        # One canonical order (LoraManager's module ids): the same modules listed in another
        # order build the same engine and must give the same id.
        modules = sorted(plan.lora_target_modules, key=lambda m: lc.MODULE_IDS.get(m, 99))
        return cls(
            model=plan.model_dir.name,
            sku=sku.name,
            compute_capability=sku.cc_string,
            precision=plan.precision,
            kv_cache_dtype=plan.kv_cache_dtype,
            tp=plan.tp,
            pp=plan.pp,
            max_batch=plan.max_batch,
            max_input_len=plan.max_input_len,
            max_seq_len=plan.max_seq_len,
            max_num_tokens=plan.max_num_tokens,
            profile=plan.profile,
            max_lora_rank=plan.max_lora_rank,
            lora_target_modules=tuple(modules),
        )

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        if data["engine"] is None:
            del data["engine"]
        if not self.max_lora_rank and not self.lora_target_modules:
            del data["max_lora_rank"], data["lora_target_modules"]
        else:
            data["lora_target_modules"] = list(self.lora_target_modules)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Profile:
        """The inverse of `to_dict` (JSON has no tuples); TypeError on unknown/missing keys."""
        if not isinstance(data, Mapping):
            raise TypeError(f"profile: {data!r} is not an object")
        fields = dict(data)
        modules = fields.get("lora_target_modules", ())
        if not isinstance(modules, list | tuple) or not all(isinstance(m, str) for m in modules):
            raise TypeError(f"lora_target_modules: {modules!r} must be a list of module names")
        fields["lora_target_modules"] = tuple(modules)
        rank = fields.get("max_lora_rank", 0)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise TypeError(f"max_lora_rank: {rank!r} must be an integer >= 0")
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def has_lora(self) -> bool:
        """Built with the LoRA plugin (a TensorRT-LLM engine that accepts adapters)."""
        return self.max_lora_rank > 0

    @property
    def id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def engine_kind(self) -> str:
        """ "vllm", "tensorrt_llm" or "cpu_reference" (what the façade must speak to it)."""
        if self.engine is not None:
            return self.engine
        return "cpu_reference" if self.sku == "cpu" else "tensorrt_llm"

    @property
    def gpus(self) -> int:
        return self.tp * self.pp if self.sku != "cpu" else 0


@dataclass(frozen=True, slots=True)
class Manifest:
    profile: Profile
    files: Mapping[str, str]  # relative path -> sha256
    tensorrt_version: str = "n/a"
    tensorrt_llm_version: str = "n/a"
    quality: Mapping[str, object] | None = None
    build_seconds: float = 0.0
    built_at: str = ""
    host: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def profile_id(self) -> str:
        return self.profile.id

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "profile_id": self.profile_id,
            "profile": self.profile.to_dict(),
            "tensorrt_version": self.tensorrt_version,
            "tensorrt_llm_version": self.tensorrt_llm_version,
            "quality": dict(self.quality) if self.quality is not None else None,
            "build_seconds": round(self.build_seconds, 3),
            "built_at": self.built_at,
            "host": self.host,
            "extra": dict(self.extra),
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, source: str = MANIFEST) -> Manifest:
        try:
            if data["schema_version"] != SCHEMA_VERSION:
                raise ManifestError(
                    f"{source}: schema_version {data['schema_version']!r}, "
                    f"expected {SCHEMA_VERSION}"
                )
            profile = Profile.from_dict(data["profile"])  # type: ignore[arg-type]
            manifest = cls(
                profile=profile,
                files=dict(data["files"]),  # type: ignore[call-overload]
                tensorrt_version=str(data["tensorrt_version"]),
                tensorrt_llm_version=str(data["tensorrt_llm_version"]),
                quality=data.get("quality"),  # type: ignore[arg-type]
                build_seconds=float(data.get("build_seconds", 0.0)),  # type: ignore[arg-type]
                built_at=str(data.get("built_at", "")),
                host=str(data.get("host", "")),
                extra=dict(data.get("extra") or {}),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{source}: malformed manifest ({exc!r})") from None
        if data.get("profile_id") != manifest.profile_id:
            raise ManifestError(
                f"{source}: profile_id {data.get('profile_id')!r} does not match the hash of "
                f"its profile fields ({manifest.profile_id})"
            )
        return manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (following links), except manifest.json.

    `__pycache__` folders are skipped: Triton's python backend writes model.py's byte-code next
    to it when it loads a version, which must not make a loaded version fail its next check.
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel != MANIFEST and path.is_file():
                out[rel] = sha256_file(path)
    return out


def write(root: Path, manifest: Manifest) -> Path:
    """Write root/manifest.json atomically."""
    path = root / MANIFEST
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    tmp.replace(path)
    return path


def read(root: Path) -> Manifest:
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a JSON object")
    return Manifest.from_dict(data, source=str(path))


def verify(root: Path) -> Manifest:
    """Read root/manifest.json and check every checksum; ManifestError listing each mismatch."""
    manifest = read(root)
    actual = hash_tree(root)
    problems: list[str] = []
    for rel, digest in sorted(manifest.files.items()):
        if rel not in actual:
            problems.append(f"missing {rel}")
        elif actual[rel] != digest:
            problems.append(
                f"checksum mismatch {rel}: expected {digest[:12]}…, got {actual[rel][:12]}…"
            )
    problems += [f"unexpected file {rel}" for rel in sorted(set(actual) - set(manifest.files))]
    if problems:
        raise ManifestError(f"{root / MANIFEST} does not match its files: " + "; ".join(problems))
    return manifest


# ---- profile selection ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hardware:
    gpus: tuple[GpuInfo, ...] = ()

    def describe(self) -> str:
        return ", ".join(f"{g.name} ({g.cc_string})" for g in self.gpus) or "cpu (no GPU)"


def detect_hardware(detector: Detector = detect_gpus) -> Hardware:
    """This host's GPUs (nvidia-smi, gpus.py); Hardware() = CPU only."""
    return Hardware(tuple(detector()))


@dataclass(frozen=True, slots=True)
class Selection:
    chosen: Manifest | None
    # Every other manifest with the reason it was not chosen, in the order considered.
    rejected: tuple[tuple[Manifest, str], ...]


def incompatibility(manifest: Manifest, hardware: Hardware) -> str | None:
    """Why `manifest` cannot run on `hardware`, or None if it can."""
    p = manifest.profile
    if p.sku == "cpu":
        return None
    sku = get_sku(p.sku)
    if not hardware.gpus:
        return f"needs {p.gpus} x {p.sku} GPU (compute {p.compute_capability}); no GPU here"
    matching = [g for g in hardware.gpus if g.cc_string == p.compute_capability]
    if not matching:
        have = ", ".join(sorted({g.cc_string for g in hardware.gpus}))
        return f"built for compute {p.compute_capability} ({p.sku}); local GPUs are compute {have}"
    if len(matching) < p.gpus:
        return f"needs {p.gpus} GPUs (tp={p.tp} x pp={p.pp}); {len(matching)} here"
    need_mib = sku.memory_gb * 1024 * MEMORY_TOLERANCE
    small = min(g.memory_mib for g in matching)
    if small < need_mib:
        return f"sized for {sku.memory_gb} GB per GPU ({p.sku}); local GPUs have {small} MiB"
    return None


def _rank(m: Manifest) -> tuple[int, int, str]:
    return (PRECISION_ORDER.get(m.profile.precision, 99), m.profile.gpus, m.profile_id)


def select_profile(manifests: Iterable[Manifest], hardware: Hardware) -> Selection:
    """Compatible first, then lower precision, then fewer GPUs (ties: profile id).

    The sort is stable: manifests of the same profile (one build installed twice) keep their
    input order, so a caller listing newest versions first gets the newest one.
    """
    ordered = sorted(manifests, key=_rank)
    chosen: Manifest | None = None
    rejected: list[tuple[Manifest, str]] = []
    for m in ordered:
        reason = incompatibility(m, hardware)
        if reason is not None:
            rejected.append((m, f"incompatible: {reason}"))
        elif chosen is None:
            chosen = m
        else:
            rejected.append((m, _lost_to(m, chosen)))
    return Selection(chosen, tuple(rejected))


def _lost_to(m: Manifest, chosen: Manifest) -> str:
    a, b = m.profile, chosen.profile
    if PRECISION_ORDER.get(a.precision, 99) > PRECISION_ORDER.get(b.precision, 99):
        return (
            f"compatible, but {b.precision} ({chosen.profile_id}) is lower precision "
            f"than {a.precision}"
        )
    if a.gpus > b.gpus:
        return f"compatible, but {chosen.profile_id} uses fewer GPUs ({b.gpus} < {a.gpus})"
    if m.profile_id == chosen.profile_id:
        return f"compatible, but the same profile {chosen.profile_id} was listed first"
    return f"compatible, but ties with {chosen.profile_id}, which sorts first by profile id"


def load_all(roots: Sequence[Path]) -> tuple[list[Manifest], list[tuple[Path, str]]]:
    """Read manifests under each root (a version dir or any dir holding them); errors apart."""
    found: list[Manifest] = []
    errors: list[tuple[Path, str]] = []
    for root in roots:
        paths = [root / MANIFEST] if (root / MANIFEST).is_file() else sorted(root.rglob(MANIFEST))
        for path in paths:
            try:
                found.append(read(path.parent))
            except ManifestError as exc:
                errors.append((path, str(exc)))
    return found, errors
