"""The LoRA adapters the façade serves: name → base model, engine task id, converted arrays.

An adapter is registered by `autoglm build adapter add` (build_engine/adapters.py), which checks
it against its base, converts it to TensorRT-LLM's LoRA layout (`model.lora_weights.npy`, shape
[modules × layers, D×Hi + Ho×D] float16, and `model.lora_config.npy`, [modules × layers, 3]
int32 rows of module id, layer, rank, each saved with a leading batch dim of 1 as
hf_lora_convert.py saves them: the `lora_weights` / `lora_config` tensors of
triton_models/templates/tensorrt_llm/config.pbtxt) and records their sha256 and a stable task id.

The façade re-checks each adapter when it loads the registry at start (`--adapters DIR`, by
default the model repository's `adapters/`): one whose files do not match their recorded
sha256, whose arrays are not of that layout, or whose base is not served on a token-id engine is
refused (logged, never served: NOT_FOUND to callers, as if it did not exist).

Memory stays bounded: the façade keeps no adapter's weights. `arrays` reads them when a request
must carry them (a task's first request in this process, or the resend after the engine's cache
lost it, engine/lora.py) and checks their sha256 again on the very bytes it parses, so a file
changed after start is never sent.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from autoglm.build_engine.manifest import Profile

WEIGHTS_FILE = "model.lora_weights.npy"
CONFIG_FILE = "model.lora_config.npy"
# TensorRT-LLM's task id is a UINT64 (`lora_task_id`); 0 is kept away from, as "no task".
MAX_TASK_ID = 2**64 - 1


class AdapterError(ValueError):
    """An adapter that cannot be served (named in the message); it is refused, not served."""


@dataclass(frozen=True, slots=True)
class ServedAdapter:
    name: str  # GenerateRequest.adapter, and its own name on the OpenAI door
    base: str  # the public name of the served model it adapts
    task_id: int  # the engine's lora_task_id: stable across restarts and replicas
    weights_file: Path
    config_file: Path
    # file -> the sha256 recorded at `add`; a file listed here is checked on every read
    sha256: Mapping[Path, str] = field(default_factory=dict)
    rank: int = 0  # the adapter's r, as registered
    target_modules: tuple[str, ...] = ()  # its Hugging Face module names, as registered

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(lora_weights [n, m] float16, lora_config [n, 3] int32), read now; AdapterError when
        a file's bytes are not those recorded."""
        return self._read(self.weights_file), self._read(self.config_file)

    def _read(self, path: Path) -> np.ndarray:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AdapterError(f"adapter {self.name}: {path.name}: {exc.strerror}") from None
        expected = self.sha256.get(path)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise AdapterError(f"adapter {self.name}: {path.name} is not the registered file")
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise AdapterError(f"adapter {self.name}: {path.name}: {exc}") from None
        # hf_lora_convert.py saves a batch of one; the request adds its own batch dim.
        return array[0] if array.ndim == 3 and array.shape[0] == 1 else array


def engine_refusal(adapter: ServedAdapter, version: int, profile: Profile) -> str | None:
    """Why `version` of the adapter's base (its manifest's profile) cannot apply `adapter`, or
    None. A TensorRT-LLM engine applies only what it was built for (no LoRA plugin, a rank
    above --max_lora_rank, a module outside --lora_target_modules: build_engine/adapters.py
    `check_engines`, which `adapter add` ran against the versions installed then; a version
    installed or made a canary later is checked here). The CPU engine applies any adapter of
    its base (PEFT)."""
    from autoglm.build_engine import adapters as registry

    if profile.engine_kind != "tensorrt_llm":
        return None
    try:
        registry.check_engines(
            adapter.rank,
            adapter.target_modules,
            (registry.EngineLora.of(version, profile),),
            base=adapter.base,
        )
    except registry.AdapterError as exc:
        return f"adapter {adapter.name}: {exc}"
    return None


def unservable(
    adapters: Iterable[ServedAdapter], served: Callable[[str], tuple[int, Profile] | None]
) -> list[str]:
    """Why each adapter the version its base serves now (`served(base)`: version and profile)
    cannot apply, for the log at start and after a reload: their requests will be refused."""
    out = []
    for adapter in adapters:
        now = served(adapter.base)
        if now is not None and (why := engine_refusal(adapter, *now)) is not None:
            out.append(why)
    return out


def check_arrays(adapter: ServedAdapter) -> None:
    """AdapterError unless the converted arrays have the layout the engine takes."""
    weights, config = adapter.arrays()
    if weights.dtype != np.float16 or weights.ndim != 2:
        raise AdapterError(
            f"adapter {adapter.name}: {WEIGHTS_FILE} must be 2-D float16,"
            f" got {weights.ndim}-D {weights.dtype}"
        )
    if config.dtype != np.int32 or config.ndim != 2 or config.shape[1] != 3:
        raise AdapterError(
            f"adapter {adapter.name}: {CONFIG_FILE} must be [n, 3] int32,"
            f" got {list(config.shape)} {config.dtype}"
        )
    if weights.shape[0] != config.shape[0] or not weights.shape[0]:
        raise AdapterError(
            f"adapter {adapter.name}: {weights.shape[0]} weight rows for"
            f" {config.shape[0]} config rows (one row per module and layer, at least one)"
        )
    if not 0 < adapter.task_id <= MAX_TASK_ID:
        raise AdapterError(f"adapter {adapter.name}: task id {adapter.task_id} out of range")


class AdapterSet:
    """The served adapters, by name; task ids are unique (the engine caches by task id)."""

    def __init__(self, adapters: Iterable[ServedAdapter] = ()) -> None:
        self._by_name: dict[str, ServedAdapter] = {}
        tasks: dict[int, str] = {}
        for adapter in adapters:
            if adapter.name in self._by_name:
                raise AdapterError(f"adapter {adapter.name}: registered twice")
            other = tasks.get(adapter.task_id)
            if other is not None:
                raise AdapterError(
                    f"adapter {adapter.name}: task id {adapter.task_id} is {other}'s too"
                )
            tasks[adapter.task_id] = adapter.name
            self._by_name[adapter.name] = adapter

    def get(self, name: str) -> ServedAdapter | None:
        return self._by_name.get(name)

    def of(self, base: str) -> list[ServedAdapter]:
        """The adapters of one served model, by name."""
        return sorted((a for a in self._by_name.values() if a.base == base), key=_name)

    def __iter__(self) -> Iterator[ServedAdapter]:
        return iter(sorted(self._by_name.values(), key=_name))

    def __len__(self) -> int:
        return len(self._by_name)


def _name(adapter: ServedAdapter) -> str:
    return adapter.name


def load_adapters(root: Path) -> tuple[list[ServedAdapter], list[str]]:
    """(the servable adapters, why each other one is refused) of a registry folder written by
    `autoglm build adapter add` (build_engine/adapters.py): every file re-hashed against the
    manifest (`verify`), the arrays' layout checked. An absent folder is no adapters."""
    from autoglm.build_engine import adapters as registry  # the build side's reader

    served: list[ServedAdapter] = []
    refused: list[str] = []
    try:
        entries = registry.load_registry(root)
    except registry.AdapterError as exc:
        return [], [f"adapter registry {root}: {exc}"]
    for name, entry in sorted(entries.items()):
        try:
            registry.verify(entry)
            files = (entry.weights_path, entry.config_path)
            keys = (registry.LORA_WEIGHTS_FILE, registry.LORA_CONFIG_FILE)
            adapter = ServedAdapter(
                name=name,
                base=entry.base,
                task_id=entry.task_id,
                weights_file=files[0],
                config_file=files[1],
                sha256={f: entry.sha256[k] for f, k in zip(files, keys, strict=True)},
                rank=entry.rank,
                target_modules=entry.target_modules,
            )
            check_arrays(adapter)
        except ValueError as exc:  # registry.AdapterError, AdapterError
            refused.append(f"adapter {name}: refused, not served: {exc}")
            continue
        served.append(adapter)
    return served, refused
