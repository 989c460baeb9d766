"""A version's own Triton config and what it takes on each GPU: pure reads of its folder.

Each installed version keeps the config it was rendered with (manifest.VERSION_CONFIG); a load
sends it as Triton's config override (model_versions.py), named for the Triton model that serves
it (the model itself, or a canary's `MODEL__canary`), with a policy of exactly that version and,
when planned (build_engine/switch_plan.py, canary_fit.py), its kv_cache_free_gpu_mem_fraction.
`version_footprint` reads what the plans need: the engine files' sizes, the GPU's memory, the
configured fraction.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.skus import get_sku
from autoglm.build_engine.switch_plan import GIB, Footprint
from autoglm.build_engine.version_plan import Candidate


class VersionRefused(RuntimeError):
    """A version was not loaded; the message names model, version and reason."""

    def __init__(self, model: str, version: int | None, reason: str) -> None:
        super().__init__(reason)
        self.model = model
        self.version = version


KV_FRACTION = "kv_cache_free_gpu_mem_fraction"  # the tensorrt_llm config's parameter
DEFAULT_FRACTION = 0.9  # TensorRT-LLM's and vLLM's default (switch_plan.py)
_RANK_ENGINE = re.compile(r"(?:^|/)rank\d+\.engine$")


def version_config(candidate: Candidate, model_root: Path) -> model_config_pb2.ModelConfig:
    """This version's own config (manifest.VERSION_CONFIG), else the model root's."""
    own = candidate.path / mf.VERSION_CONFIG
    path = own if own.is_file() else model_root / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    if config.name and config.name != candidate.model:
        raise VersionRefused(
            candidate.model,
            candidate.version,
            f"{candidate.label}: {path} names model {config.name!r}",
        )
    return config


def triton_config_json(
    candidate: Candidate,
    model_root: Path,
    *,
    kv_fraction: float | None = None,
    name: str | None = None,
) -> str:
    """The config override: this version's config with a policy of exactly this version
    (and, for a REDUCED_FRACTION switch, the planned kv_cache_free_gpu_mem_fraction), for the
    Triton model `name` (default: the version's own model; a canary's alias)."""
    config = version_config(candidate, model_root)
    config.name = name or candidate.model
    config.version_policy.specific.versions[:] = [candidate.version]
    if kv_fraction is not None:
        config.parameters[KV_FRACTION].string_value = repr(float(kv_fraction))
    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)


def gpu_memory_bytes(profile: mf.Profile, hardware: mf.Hardware) -> int:
    """Usable memory of one GPU: the smallest detected one, else the SKU's (with the tolerance
    manifest.incompatibility accepts)."""
    if hardware.gpus:
        return min(g.memory_mib for g in hardware.gpus) << 20
    return int(get_sku(profile.sku).memory_gb * GIB * mf.MEMORY_TOLERANCE)


def version_footprint(candidate: Candidate, model_root: Path, hardware: mf.Hardware) -> Footprint:
    """What a version takes per GPU, from its manifest, its files' sizes and its config."""
    assert candidate.manifest is not None
    p = candidate.manifest.profile
    kind = p.engine_kind
    if p.sku == "cpu":
        return Footprint(kind)
    memory = gpu_memory_bytes(p, hardware)
    if kind == "vllm":
        args = candidate.manifest.extra.get("engine_args")
        share = args.get("gpu_memory_utilization") if isinstance(args, dict) else None
        return Footprint(kind, p.gpus, 0, float(share or DEFAULT_FRACTION), memory)
    # Each rank's engine file holds that GPU's share of the weights (TP x PP ranks).
    sizes = [
        (candidate.path / rel).stat().st_size
        for rel in candidate.manifest.files
        if _RANK_ENGINE.search(rel)
    ]
    params = version_config(candidate, model_root).parameters
    text = params[KV_FRACTION].string_value if KV_FRACTION in params else ""
    try:
        fraction = float(text)
    except ValueError:
        fraction = DEFAULT_FRACTION  # an unset placeholder: the backend's default applies
    return Footprint(kind, p.gpus, max(sizes, default=0), fraction, memory)
