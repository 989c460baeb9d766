"""The LoRA adapter registry: `autoglm build adapter add|list`.

An adapter is a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) fine-tuned
from one of the served models. `add` checks it against its base (`check`, pure: every refusal
names the field), converts it to TensorRT-LLM's `lora_weights` / `lora_config` arrays
(triton_models/lora_format.py, the layout of the pinned release's hf_lora_convert.py), and
stores both under `<model repository>/adapters/<NAME>/`:

    adapter.json                     the manifest (ADAPTER_MANIFEST): name, base, task id,
                                     rank, target modules, sha256 of every file below
    source/adapter_config.json       the PEFT folder as given (copied)
    source/adapter_model.safetensors
    model.lora_weights.npy           [1, rows, width] float16, as hf_lora_convert.py saves it
    model.lora_config.npy            [1, rows, 3] int32

Triton runs with `--model-control-mode=explicit`, so the `adapters/` folder beside the models
is never taken for a model, and version scans only look at numeric folders.

Task ids: the executor caches an adapter by its 64-bit task id, so an id must never name two
different adapters, on this host or on any replica with its own copy of the registry. The id is
derived from the content, not counted: the first 8 bytes of the sha256 of the converted arrays,
shifted to 63 bits (a signed 64-bit reader never sees it negative) and never 0. Same arrays,
same id (harmless: the same weights); different arrays, a different id (a collision among n
adapters has probability ~n^2 / 2^64, and `add` refuses one anyway). A counter would need a
lock shared by every host and would give a re-added name with new weights a fresh id only if
the counter file survived; a content id needs neither.

A base whose installed versions include TensorRT-LLM engines (`<repository>/<base>/<N>/`,
manifest.json) is also held to what each such engine was built for: its manifest's profile
records trtllm-build's --max_lora_rank and --lora_target_modules (manifest.Profile), and
`check_engines` refuses an adapter of a higher rank, one targeting a module the engine has no
LoRA for, and any adapter for an engine built without LoRA. Every installed TensorRT-LLM version
must accept it, not only the one served now: `autoglm build activate` (a pin, a canary, a
rollback) can switch to any of them without the registry being consulted again. CPU reference
versions keep the checks against the HF folder alone, with `max_rank` (default 64).

`load_registry(root)` and `verify(adapter)` are what the façade reads adapters through:
`verify` re-hashes every file and refuses an adapter whose bytes changed since `add`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoglm.build_engine import manifest as mf
from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models import lora_format

ADAPTERS_DIR = "adapters"
ADAPTER_MANIFEST = "adapter.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LORA_WEIGHTS_FILE = "model.lora_weights.npy"  # hf_lora_convert.py's save_val names
LORA_CONFIG_FILE = "model.lora_config.npy"
FORMAT_VERSION = 1
# Our default for the engine's --max_lora_rank (compile.py) and the CPU engine's limit.
DEFAULT_MAX_RANK = 64
ADAPTER_DTYPES = frozenset({"float16", "bfloat16", "float32"})


class AdapterError(ValueError):
    """An adapter refused (bad folder, not fitting its base, changed bytes); names the field."""


@dataclass(frozen=True, slots=True)
class BaseModel:
    """What an adapter is checked against: the base's HF folder, read by `read_base`."""

    name: str  # the HF folder's name, e.g. SmolLM2-135M-Instruct
    architecture: str  # config.json architectures[0]
    num_layers: int
    # HF module name -> (in_features, out_features) of layer 0's Linear
    modules: Mapping[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class EngineLora:
    """What one installed TensorRT-LLM version of a base accepts, from its manifest's profile."""

    version: int
    max_lora_rank: int  # 0 = built without the LoRA plugin
    target_modules: tuple[str, ...]  # TensorRT-LLM module names (attn_q, mlp_gate, ...)

    @classmethod
    def of(cls, version: int, profile: mf.Profile) -> EngineLora:
        return cls(version, profile.max_lora_rank, profile.lora_target_modules)


@dataclass(frozen=True, slots=True)
class Adapter:
    """One registered adapter, as `load_registry` reads its manifest."""

    name: str
    base: str  # the served model's name (its folder in the model repository)
    task_id: int
    rank: int
    target_modules: tuple[str, ...]
    files: Mapping[str, Path]  # manifest key (path relative to the adapter folder) -> path
    sha256: Mapping[str, str]  # the same keys -> hex digest recorded at `add`

    @property
    def weights_path(self) -> Path:
        return self.files[LORA_WEIGHTS_FILE]

    @property
    def config_path(self) -> Path:
        return self.files[LORA_CONFIG_FILE]


# ---- pure ------------------------------------------------------------------------------------


def check(
    config: Mapping[str, Any],
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    base: BaseModel,
    *,
    max_rank: int | None = DEFAULT_MAX_RANK,
) -> tuple[int, tuple[str, ...], float]:
    """Check a PEFT adapter (its adapter_config.json, and each tensor's (shape, dtype name))
    against its base; return (rank, target modules, scale). AdapterError names the field.
    `max_rank` None: no bound here (a TensorRT-LLM base's engines bound it: check_engines)."""
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"peft_type: {config.get('peft_type')!r} is not LORA")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"r: {rank!r} must be an integer >= 1")
    if max_rank is not None and rank > max_rank:
        raise AdapterError(f"r: {rank!r} must be an integer in [1, {max_rank}] (max_lora_rank)")
    alpha = config.get("lora_alpha", rank)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise AdapterError(f"lora_alpha: {alpha!r} must be a number > 0")
    # Features TensorRT-LLM's LoRA plugin does not apply: refused rather than served wrong.
    for field, ok in (
        ("use_dora", not config.get("use_dora")),
        ("bias", config.get("bias", "none") == "none"),
        ("modules_to_save", not config.get("modules_to_save")),
        ("fan_in_fan_out", not config.get("fan_in_fan_out")),
        ("rank_pattern", not config.get("rank_pattern")),
        ("alpha_pattern", not config.get("alpha_pattern")),
        ("lora_bias", not config.get("lora_bias")),
        ("layer_replication", not config.get("layer_replication")),
        ("target_parameters", not config.get("target_parameters")),
        ("trainable_token_indices", not config.get("trainable_token_indices")),
    ):
        if not ok:
            raise AdapterError(f"{field}: {config.get(field)!r} is not supported by the engine")
    wanted = config.get("base_model_name_or_path")
    if wanted and Path(str(wanted)).name.lower() != base.name.lower():
        raise AdapterError(
            f"base_model_name_or_path: {wanted!r} is not the base model {base.name!r}"
        )
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise AdapterError(f"target_modules: {targets!r} must be a non-empty list")
    for module in targets:
        if module not in lc.HF_TO_TRTLLM:
            raise AdapterError(
                f"target_modules: {module!r} has no TensorRT-LLM LoRA module "
                f"(known: {sorted(lc.HF_TO_TRTLLM)})"
            )
        if module not in base.modules:
            raise AdapterError(
                f"target_modules: {module!r} is not a module of {base.name} ({base.architecture})"
            )
    dtypes = {dtype for _, dtype in tensors.values()}
    if not dtypes <= ADAPTER_DTYPES or len(dtypes) > 1:
        raise AdapterError(f"dtype: tensors are {sorted(dtypes)}, one of {sorted(ADAPTER_DTYPES)}")
    seen: set[str] = set()
    for key, (shape, _) in tensors.items():
        layer, module, half = _parse_key(key)
        if module not in targets:
            raise AdapterError(f"{key}: module {module!r} is not in target_modules")
        if not 0 <= layer < base.num_layers:
            raise AdapterError(f"{key}: layer {layer} not in the base's {base.num_layers}")
        d_in, d_out = base.modules[module]
        want = (rank, d_in) if half == "A" else (d_out, rank)
        if tuple(shape) != want:
            raise AdapterError(f"{key}: shape {tuple(shape)}, the base needs {want}")
        seen.add(module)
    if not tensors:
        raise AdapterError(f"{WEIGHTS_FILE}: holds no LoRA weights")
    scale = alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank
    return rank, tuple(sorted(seen, key=lambda m: lc.MODULE_IDS[lc.HF_TO_TRTLLM[m]])), scale


def check_engines(
    rank: int, modules: tuple[str, ...], engines: tuple[EngineLora, ...], *, base: str = "the base"
) -> None:
    """Refuse an adapter (`check`'s rank and HF target modules) that one of its base's installed
    TensorRT-LLM versions cannot serve; AdapterError names the field, the adapter's value and
    the engine's. An engine built without the LoRA plugin has no LoRA layers to apply one; the
    plugin's workspace and the backend's LoRA cache pages are sized for --max_lora_rank
    (plan.py, install.lora_cache_sizes); a module outside --lora_target_modules has no LoRA
    layer in the engine."""
    for engine in engines:
        where = f"{base} version {engine.version} (a TensorRT-LLM engine)"
        if not engine.max_lora_rank:
            raise AdapterError(
                f"max_lora_rank: {where} was built without LoRA (max_lora_rank 0, no "
                "lora_target_modules): it serves no adapter; build it with --max-lora-rank"
            )
        if rank > engine.max_lora_rank:
            raise AdapterError(
                f"r: the adapter's rank {rank} exceeds max_lora_rank {engine.max_lora_rank} "
                f"of {where}"
            )
        missing = [m for m in modules if lc.HF_TO_TRTLLM[m] not in engine.target_modules]
        if missing:
            wanted = [f"{m} ({lc.HF_TO_TRTLLM[m]})" for m in missing]
            raise AdapterError(
                f"target_modules: the adapter's {', '.join(wanted)} "
                f"{'is' if len(wanted) == 1 else 'are'} not among "
                f"lora_target_modules {list(engine.target_modules)} of {where}"
            )


def task_id_of(weights: np.ndarray, config: np.ndarray) -> int:
    """The stable 63-bit task id of converted arrays (see the module docstring)."""
    digest = hashlib.sha256()
    for arr in (config, weights):
        digest.update(str((arr.dtype.str, arr.shape)).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return (int.from_bytes(digest.digest()[:8], "big") >> 1) or 1


def manifest_dict(
    name: str,
    base: str,
    task_id: int,
    rank: int,
    target_modules: tuple[str, ...],
    sha256: Mapping[str, str],
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "base": base,
        "task_id": task_id,
        "rank": rank,
        "target_modules": list(target_modules),
        "sha256": dict(sorted(sha256.items())),
    }


def _parse_key(key: str) -> tuple[int, str, str]:
    parts = key.split(".")
    try:
        i = parts.index("layers")
        layer, module, half = int(parts[i + 1]), parts[i + 3], parts[i + 4]
    except (ValueError, IndexError):
        raise AdapterError(f"{key}: not a LoRA weight of a decoder layer") from None
    if half not in ("lora_A", "lora_B") or parts[-1] != "weight":
        raise AdapterError(f"{key}: not a lora_A / lora_B weight")
    return layer, module, half[-1]


def check_name(name: str) -> None:
    ok = bool(name) and len(name) <= 64 and name[0].isalnum()
    ok = ok and all(c.isalnum() or c in "-_." for c in name)
    if not ok:
        raise AdapterError(f"name: {name!r} must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")


# ---- I/O -------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npy_sha256(arr: np.ndarray) -> str:
    """The sha256 of the .npy file np.save writes for `arr` (what the manifest records)."""
    buf = io.BytesIO()
    np.save(buf, arr)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def read_base(hf_dir: Path) -> BaseModel:
    """The base's architecture, layer count and the (in, out) features of each module of layer
    0, from config.json and the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"base: cannot read {hf_dir / 'config.json'}: {exc}") from None
    modules: dict[str, tuple[int, int]] = {}
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise AdapterError(f"base: no *.safetensors in {hf_dir}")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                parts = key.split(".")
                if key.endswith(".weight") and ".layers.0." in key and len(parts) >= 3:
                    module = parts[-2]
                    if module in lc.HF_TO_TRTLLM:
                        out_f, in_f = f.get_slice(key).get_shape()
                        modules[module] = (int(in_f), int(out_f))
    archs = config.get("architectures") or ["?"]
    return BaseModel(
        name=hf_dir.name,
        architecture=str(archs[0]),
        num_layers=int(config.get("num_hidden_layers", 0)),
        modules=modules,
    )


def _read_adapter(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """(adapter_config.json, tensors as float32 numpy, each tensor's dtype name)."""
    from safetensors.torch import load_file

    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{CONFIG_FILE}: cannot read in {path}: {exc}") from None
    if not (path / WEIGHTS_FILE).is_file():
        raise AdapterError(f"{WEIGHTS_FILE}: missing in {path}")
    tensors = load_file(str(path / WEIGHTS_FILE))
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()}
    arrays = {k: v.float().numpy() for k, v in tensors.items()}
    return config, arrays, dtypes


def hf_dir_of(repository: Path, model: str) -> Path:
    """The base's HF folder named by `<repository>/<model>/config.pbtxt`'s `hf_model_dir`
    (the CPU engine's config); AdapterError naming --base-dir when there is none."""
    path = repository / model / "config.pbtxt"
    text = path.read_text() if path.is_file() else ""
    found = re.search(r'key: "hf_model_dir" value: \{ string_value: "([^"]+)" \}', text)
    if not found:
        raise AdapterError(f"--base-dir: {path} names no hf_model_dir; give the base's HF folder")
    return Path(found.group(1))


def installed_profiles(repository: Path, model: str) -> list[tuple[int, mf.Profile]]:
    """(version, profile) of each installed version of `model` in a Triton model repository,
    oldest first. A version whose manifest cannot be read is left out: the façade refuses to
    load it (its checksums are verified first), so it serves no adapter either."""
    model_dir = repository / model
    if not model_dir.is_dir():
        return []
    out: list[tuple[int, mf.Profile]] = []
    # Triton's versions are the numeric folders (install.py stages in `.staging-*`).
    for vdir in sorted(
        (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    ):
        try:
            out.append((int(vdir.name), mf.read(vdir).profile))
        except mf.ManifestError:
            continue
    return out


def add(
    registry: Path,
    name: str,
    *,
    base: str,
    base_dir: Path,
    source: Path,
    max_rank: int | None = None,
) -> Adapter:
    """Check, convert and register `source` as adapter `name` of served model `base`.

    The registry is `<model repository>/adapters`: the base's installed versions are read from
    `registry.parent / base`. `max_rank` bounds the rank on top of what those versions accept;
    None = DEFAULT_MAX_RANK, except for a base whose versions are all TensorRT-LLM engines,
    whose recorded --max_lora_rank is the bound (`check_engines`)."""
    check_name(name)
    target = registry / name
    if target.exists():
        raise AdapterError(f"name: adapter {name!r} is already registered ({target})")
    profiles = installed_profiles(registry.parent, base)
    engines = tuple(EngineLora.of(v, p) for v, p in profiles if p.engine_kind == "tensorrt_llm")
    if max_rank is None and (not engines or len(engines) < len(profiles)):
        max_rank = DEFAULT_MAX_RANK  # a CPU reference / vLLM version, or none: today's bound
    config, arrays, dtypes = _read_adapter(source)
    shapes = {k: (tuple(v.shape), dtypes[k]) for k, v in arrays.items()}
    rank, modules, scale = check(config, shapes, read_base(base_dir), max_rank=max_rank)
    check_engines(rank, modules, engines, base=base)
    try:
        pairs = lora_format.peft_modules(arrays)  # e.g. a lora_A without its lora_B
    except ValueError as exc:
        raise AdapterError(str(exc)) from None
    weights, lora_config = lora_format.to_trtllm(pairs, scale=scale)
    task_id = task_id_of(weights, lora_config)
    weights_sha = _npy_sha256(weights)
    for other in load_registry(registry).values():
        # The same arrays under another name share the id (same weights, harmless); other
        # arrays with the same id would be served in each other's place.
        if other.task_id == task_id and other.sha256.get(LORA_WEIGHTS_FILE) != weights_sha:
            raise AdapterError(f"task_id: {task_id} is already adapter {other.name!r}'s")
    registry.mkdir(parents=True, exist_ok=True)
    # Staged in a sibling folder and renamed: a reader never sees half an adapter.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=registry))
    try:
        (staging / "source").mkdir()
        for file in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(source / file, staging / "source" / file)
        np.save(staging / LORA_WEIGHTS_FILE, weights)
        np.save(staging / LORA_CONFIG_FILE, lora_config)
        keys = (
            f"source/{CONFIG_FILE}",
            f"source/{WEIGHTS_FILE}",
            LORA_WEIGHTS_FILE,
            LORA_CONFIG_FILE,
        )
        sha = {key: sha256_file(staging / key) for key in keys}
        manifest = manifest_dict(name, base, task_id, rank, modules, sha)
        (staging / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _adapter(target, manifest)


def _adapter(folder: Path, manifest: Mapping[str, Any]) -> Adapter:
    try:
        sha = dict(manifest["sha256"])
        return Adapter(
            name=str(manifest["name"]),
            base=str(manifest["base"]),
            task_id=int(manifest["task_id"]),
            rank=int(manifest["rank"]),
            target_modules=tuple(manifest["target_modules"]),
            files={key: folder / key for key in sha},
            sha256=sha,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"{folder / ADAPTER_MANIFEST}: malformed ({exc!r})") from None


def load_registry(root: Path) -> dict[str, Adapter]:
    """Every registered adapter under `root` (`<model repository>/adapters`), by name; an
    absent root is an empty registry. Reads manifests only: `verify` checks the bytes."""
    out: dict[str, Adapter] = {}
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = folder / ADAPTER_MANIFEST
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise AdapterError(f"{path}: not JSON ({exc})") from None
        adapter = _adapter(folder, manifest)
        if adapter.name != folder.name:
            raise AdapterError(f"{path}: name {adapter.name!r} is not its folder's")
        out[adapter.name] = adapter
    return out


def verify(adapter: Adapter) -> None:
    """Re-hash every file of the adapter; AdapterError naming the file on a mismatch (the
    adapter must then not be served at all)."""
    for key in (LORA_WEIGHTS_FILE, LORA_CONFIG_FILE):
        if key not in adapter.sha256:
            raise AdapterError(f"sha256: the manifest of {adapter.name!r} lacks {key}")
    for key, expected in adapter.sha256.items():
        path = adapter.files[key]
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != expected:
            raise AdapterError(
                f"sha256: {adapter.name!r} {key} is {actual}, the registry recorded {expected}"
            )


def verified_tensors(adapter: Adapter) -> tuple[np.ndarray, np.ndarray]:
    """(lora_weights [1, rows, width] float16, lora_config [1, rows, 3] int32), after `verify`:
    the arrays a request's first use of the adapter carries."""
    verify(adapter)
    arrays = []
    for key in (LORA_WEIGHTS_FILE, LORA_CONFIG_FILE):
        # Hashed again from the very bytes parsed: a file swapped after `verify` is refused too.
        data = adapter.files[key].read_bytes()
        if hashlib.sha256(data).hexdigest() != adapter.sha256[key]:
            raise AdapterError(f"sha256: {adapter.name!r} {key} changed while being read")
        arrays.append(np.load(io.BytesIO(data), allow_pickle=False))
    return arrays[0], arrays[1]
