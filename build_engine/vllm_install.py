"""Install a vLLM profile as a new version of a model in a Triton model repository.

Layout (Triton's vLLM backend reads the version's model.json, vllm_backend 8de0c14):
    <repo>/<model>/config.pbtxt              backend "vllm" (triton_models/vllm.py)
    <repo>/<model>/<version>/model.json      the engine arguments
    <repo>/<model>/<version>/triton_config.pbtxt, tokenizer/config files, manifest.json
The checkpoint stays where it is (model.json points at it, by absolute path); its sha256 list
goes into the manifest (`extra.checkpoint`), so the next install — or a `--sha256-file` pointing
at this manifest — verifies the same bytes. The version's own files are checksummed like every
other version's (manifest.verify), and the façade finds the tokenizer, chat template and
config.json in the version directory, as for a TensorRT-LLM version.

Staged next to its final place and renamed in one step, as install.py does.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.checkpoint import (
    CheckpointError,
    checkpoint_shapes,
    hash_checkpoint,
    read_expected,
    verify,
)
from autoglm.build_engine.glm41v_shape import Glm4vShape, ParamCounts
from autoglm.build_engine.install import TOKENIZER_FILES, Installed, next_version
from autoglm.build_engine.vllm_profile import (
    ENGINE,
    SKU_SETTINGS,
    VllmProfile,
    VllmProfileError,
    plan_profile,
    with_version,
)
from autoglm.triton_models.vllm import ENGINE_ARGS_FILE, render_vllm_model

# The façade also reads the model's config (context length, end ids, image geometry).
MODEL_FILES: tuple[str, ...] = (*TOKENIZER_FILES, "config.json", "preprocessor_config.json")
# Where the vLLM backend's tensors were read (triton_models/vllm_contract.py).
VLLM_BACKEND_SOURCE = "triton-inference-server/vllm_backend@8de0c14"


# config.json `architectures`: the profile's arithmetic is GLM-4.1V's (glm41v_shape.Glm4vShape).
ARCHITECTURE = "Glm4vForConditionalGeneration"


def load_profile(model_dir: Path, *, sku_name: str, **overrides: object) -> VllmProfile:
    """Read the checkpoint's config.json and safetensors headers, then `plan_profile`.

    The parameter count comes from the headers (the checkpoint's own tensors); a folder without
    .safetensors files (a config-only copy, as in tests) falls back to the shape's arithmetic.
    """
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VllmProfileError(f"--model-dir: {path}: {exc}") from None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(architectures, list) or ARCHITECTURE not in architectures:
        raise VllmProfileError(
            f"--model-dir: {path} declares architectures {architectures!r}; this profile is "
            f"for GLM-4.1V ({ARCHITECTURE}), e.g. AutoGLM-Phone-9B"
        )
    shape = Glm4vShape.from_config(config)
    tensors = checkpoint_shapes(model_dir)
    params = ParamCounts.from_headers(tensors) if tensors else ParamCounts.from_shape(shape)
    return plan_profile(
        sku_name=sku_name,
        model_dir=model_dir,
        shape=shape,
        params=params,
        **overrides,  # type: ignore[arg-type]
    )


def runtime_versions() -> dict[str, str]:
    """What this host runs, for the manifest (the vLLM inside the Triton image on a GPU host)."""
    try:
        vllm = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        vllm = "not installed here"
    return {
        "vllm": vllm,
        # Set in NVIDIA's Triton images (e.g. "26.04"); absent elsewhere.
        "triton_container": os.environ.get("NVIDIA_TRITON_SERVER_VERSION", "unknown"),
        "triton_server": os.environ.get("TRITON_SERVER_VERSION", "unknown"),
    }


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    files: Mapping[str, str]  # relative path -> sha256
    verified_against: str  # the list it matched, or "recorded" (nothing to match yet)


def latest_checkpoint_manifest(model_root: Path) -> Path | None:
    """The newest installed version's manifest that records a checkpoint, if any."""
    if not model_root.is_dir():
        return None
    versions = sorted(
        (int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()),
        reverse=True,
    )
    for v in versions:
        path = model_root / str(v) / mf.MANIFEST
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        extra = data.get("extra") if isinstance(data, dict) else None
        if isinstance(extra, dict) and "checkpoint" in extra:
            return path
    return None


def check_checkpoint(
    model_dir: Path, *, sha256_file: Path | None, model_root: Path
) -> CheckpointRecord:
    """Verify against `sha256_file`, else against the last install's manifest, else record.

    Recording (first install, no list given) is trust on first use: the message says so.
    """
    source = sha256_file or latest_checkpoint_manifest(model_root)
    if source is None:
        return CheckpointRecord(hash_checkpoint(model_dir), "recorded")
    expected = read_expected(source)
    if not any(rel.endswith(".safetensors") for rel in expected):
        raise CheckpointError(f"{source}: lists no .safetensors weight file")
    return CheckpointRecord(verify(model_dir, expected, source=str(source)), str(source))


def _profile_fields(p: VllmProfile) -> mf.Profile:
    e = p.engine
    defaults = SKU_SETTINGS[p.sku.name]
    is_default = (e.tensor_parallel_size, e.max_num_seqs, e.gpu_memory_utilization) == (
        defaults.tp,
        defaults.max_num_seqs,
        defaults.gpu_memory_utilization,
    )
    return mf.Profile(
        model=p.model,
        sku=p.sku.name,
        compute_capability=p.sku.cc_string,
        precision=p.precision,
        kv_cache_dtype=e.kv_cache_dtype,
        tp=e.tensor_parallel_size,
        pp=1,
        max_batch=e.max_num_seqs,
        max_input_len=e.max_model_len,
        max_seq_len=e.max_model_len,
        max_num_tokens=e.max_num_batched_tokens,
        profile="default" if is_default else "custom",
        engine=ENGINE,
    )


def install_vllm_version(
    profile: VllmProfile,
    repo: Path,
    checkpoint: CheckpointRecord,
    *,
    versions: Mapping[str, str],
) -> Installed:
    """Render and install the next version of `profile.engine.model_name` into `repo`."""
    model_root = repo / profile.engine.model_name
    model_root.mkdir(parents=True, exist_ok=True)
    version = next_version(model_root)
    profile = with_version(profile, version)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_root))
    try:
        render_vllm_model(staging / "repo", profile.engine)
        rendered = staging / "repo" / profile.engine.model_name
        vdir = staging / "version"
        (rendered / str(version)).rename(vdir)
        source = profile.engine.model_dir
        for name in MODEL_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, vdir / name)
        shutil.copyfile(rendered / "config.pbtxt", vdir / mf.VERSION_CONFIG)
        engine_args = json.loads((vdir / ENGINE_ARGS_FILE).read_text())
        manifest = mf.Manifest(
            profile=_profile_fields(profile),
            files=mf.hash_tree(vdir),
            build_seconds=time.monotonic() - started,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            host=socket.gethostname(),
            extra={
                "engine": ENGINE,
                "versions": dict(versions),
                "vllm_backend_source": VLLM_BACKEND_SOURCE,
                "engine_args": engine_args,
                "memory_fit": profile.fit.to_dict(),
                "checkpoint": {
                    "dir": str(source),
                    "verified_against": checkpoint.verified_against,
                    "files": dict(sorted(checkpoint.files.items())),
                },
            },
        )
        mf.write(vdir, manifest)
        final = model_root / str(version)
        vdir.rename(final)
        tmp = staging / "config.pbtxt"
        shutil.copyfile(rendered / "config.pbtxt", tmp)
        os.replace(tmp, model_root / "config.pbtxt")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Installed(model_root, version, final, mf.verify(final))
