"""Install a build result as a new numbered version of a model in a Triton model repository.

Atomic: the version directory is staged next to its final place (same filesystem) and renamed
in one step, then config.pbtxt is replaced with `os.replace`; Triton never sees a half-copied
version. Each version carries its manifest.json (checksums verified before and after copying).
- `cpu`: the CPU reference engine (`render_cpu_model`): model.py, a link `hf` to the HF folder,
  the tokenizer files, manifest.json; a quantized precision adds `fake_quant/` (the ModelOpt
  state saved by `quantize`, checksummed like everything else) and its config points the engine
  at it. The quality gate must have passed, as for a GPU engine.
- every version also keeps its own rendered config (`triton_config.pbtxt`, manifest.VERSION_CONFIG,
  checksummed): the serving side loads an older version with it as Triton's config override.
- GPU SKUs: the `tensorrt_llm` model (`TensorRTLLMConfig(...).render`) pointing at the version
  directory, which holds the engine files (config.json + rank<N>.engine) and manifest.json. An
  engine built with LoRA gets the backend's LoRA cache sized for its --max_lora_rank
  (`lora_cache_sizes`); its manifest's profile records the rank and target modules.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.quality import QualityResult
from autoglm.build_engine.skus import get_sku
from autoglm.triton_models.cpu_engine.fake_quant import FakeQuantError, FakeQuantInfo
from autoglm.triton_models.repository import CpuEngineConfig, render_cpu_model
from autoglm.triton_models.tensorrt_llm import TensorRTLLMConfig

# The files the façade's tokenizer and chat template need (transformers' save_pretrained names).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)

# PeftCacheConfig::kDefaultOptimalAdapterSize, the backend's lora_cache_optimal_adapter_size
# default (docs/model_config.md "LoRA cache"; TensorRTLLMConfig's default).
OPTIMAL_ADAPTER_SIZE = 8


class InstallError(RuntimeError):
    """The result cannot be installed (missing files, bad manifest, quality gate not passed)."""


@dataclass(frozen=True, slots=True)
class Installed:
    model_dir: Path
    version: int
    version_dir: Path
    manifest: mf.Manifest


def next_version(model_root: Path) -> int:
    """1 + the highest numeric version directory (Triton versions are positive integers)."""
    versions = [int(p.name) for p in model_root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def install(
    plan: BuildPlan,
    *,
    quality: QualityResult | None = None,
    cpu_instance_count: int = 1,
) -> Installed:
    plan.validate()
    if plan.model_repo is None:
        raise InstallError("the plan has no model_repo to install into")
    if quality is not None and not quality.passed:
        raise InstallError(f"quality gate did not pass: {'; '.join(quality.reasons)}")
    if plan.is_cpu_fake_quant and quality is None:
        raise InstallError(
            f"a {plan.precision} fake-quant version needs the quality gate's result "
            "(run quantize and quality first)"
        )
    model_root = plan.model_repo / plan.model_name
    model_root.mkdir(parents=True, exist_ok=True)
    version = next_version(model_root)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_root))
    try:
        if get_sku(plan.sku).is_gpu:
            config_text, _ = _stage_gpu(plan, staging, model_root / str(version))
        else:
            config_text, _ = _stage_cpu(plan, staging, version, cpu_instance_count, quality)
        final = model_root / str(version)
        (staging / "version").rename(final)
        tmp = staging / "config.pbtxt"
        tmp.write_text(config_text)
        os.replace(tmp, model_root / "config.pbtxt")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Installed(model_root, version, final, mf.verify(final))


def lora_cache_sizes(plan: BuildPlan) -> dict[str, int]:
    """The backend's LoRA cache sizes for the plan's engine; {} when built without LoRA (the
    template's defaults, so such a version's config stays byte for byte what it was).

    Both sizes are adapter ranks, not bytes nor rank x layers: the backend's docs
    (triton-inference-server/tensorrtllm_backend docs/model_config.md, "LoRA cache") say
    `lora_cache_max_adapter_size` sets the minimum cache page, which must fit "a single module,
    single layer adapter_size maxAdapterSize row of weights", and PeftCacheManager multiplies
    it by the modules' widths and the layers itself (NVIDIA/TensorRT-LLM
    cpp/tensorrt_llm/batch_manager/peftCacheManager.cpp, getPageManagerConfig: maxLoraSize =
    maxAdapterSize x sum(in + out) x layers; minNumSlots = maxAdapterSize x max module width /
    page width; the newest stored commit, 0cedd9a0400c01cc94e01ea59d87bc6a81890cb7). A module
    row of a higher rank than a page holds does not fit its page (cpp/tensorrt_llm/runtime/
    loraCache.cpp, determineNumPages, commit 063e02f73410f2f9172a581ca5e3f41d0d3dab8e), so the
    maximum is the engine's --max_lora_rank (that newest PeftCacheManager also clamps both sizes
    down to the engine's rank, never up). The optimal size (a page holds one whole adapter of
    that rank) stays the backend's default 8, capped at the maximum (TensorRTLLMConfig.validate
    needs optimal <= max).
    """
    if not plan.max_lora_rank:
        return {}
    return {
        "lora_cache_max_adapter_size": plan.max_lora_rank,
        "lora_cache_optimal_adapter_size": min(OPTIMAL_ADAPTER_SIZE, plan.max_lora_rank),
    }


def _stage_gpu(plan: BuildPlan, staging: Path, final: Path) -> tuple[str, mf.Manifest]:
    engine_dir = plan.engine_dir
    if not list(engine_dir.glob("rank*.engine")) or not (engine_dir / "config.json").is_file():
        raise InstallError(f"{engine_dir} holds no engine (config.json + rank*.engine)")
    manifest = mf.verify(engine_dir)  # written by the compile step
    if manifest.profile != mf.Profile.from_plan(plan):
        raise InstallError(
            f"{engine_dir / mf.MANIFEST} is profile {manifest.profile_id}, the plan is "
            f"{mf.Profile.from_plan(plan).id}"
        )
    version = staging / "version"
    shutil.copytree(engine_dir, version)
    mf.verify(version)
    # The façade tokenizes: the version carries the checkpoint's tokenizer and chat template.
    tokenizer = [n for n in TOKENIZER_FILES if (plan.model_dir / n).is_file()]
    for name in tokenizer:
        shutil.copy2(plan.model_dir / name, version / name)
    rendered = TensorRTLLMConfig(
        engine_dir=final,
        model_name=plan.model_name,
        triton_max_batch_size=plan.max_batch,
        gpu_device_ids=tuple(range(plan.world_size)),
        **lora_cache_sizes(plan),
    ).render(staging / "render")
    # This version's own config (manifest.VERSION_CONFIG), checksummed with the engine files.
    shutil.copyfile(rendered, version / mf.VERSION_CONFIG)
    files = {
        **manifest.files,
        **{name: mf.sha256_file(version / name) for name in tokenizer},
        mf.VERSION_CONFIG: mf.sha256_file(version / mf.VERSION_CONFIG),
    }
    manifest = replace(manifest, files=files)
    mf.write(version, manifest)
    return rendered.read_text(), manifest


def _fake_quant_info(plan: BuildPlan) -> FakeQuantInfo:
    """The saved fake-quant state, checked against the plan (the manifest must tell the truth)."""
    try:
        info = FakeQuantInfo.read(plan.fake_quant_dir)
    except FakeQuantError as exc:
        raise InstallError(f"{exc} (run quantize first)") from None
    if (info.precision, info.kv_cache_dtype) != (plan.precision, plan.kv_cache_dtype):
        raise InstallError(
            f"{plan.fake_quant_dir} is {info.precision} with {info.kv_cache_dtype} KV, the plan "
            f"is {plan.precision} with {plan.kv_cache_dtype} KV: run quantize again"
        )
    return info


def _stage_cpu(
    plan: BuildPlan,
    staging: Path,
    version: int,
    instance_count: int,
    quality: QualityResult | None,
) -> tuple[str, mf.Manifest]:
    source = plan.model_dir.resolve()
    repo = staging / "repo"
    assert plan.model_repo is not None  # checked by install()
    info = _fake_quant_info(plan) if plan.is_cpu_fake_quant else None
    fake_quant_name = plan.fake_quant_dir.name
    render_cpu_model(
        repo,
        CpuEngineConfig(
            model_name=plan.model_name,
            hf_model_dir=source,
            instance_count=instance_count,
            max_batch_size=plan.max_batch,
            version=version,
            precision=plan.precision,
            # The prompt limit the manifest records, enforced as a TensorRT-LLM engine does.
            max_input_len=plan.max_input_len,
            # Where the version will be once renamed into place (the config is rendered first).
            fake_quant_dir=(
                plan.model_repo.resolve() / plan.model_name / str(version) / fake_quant_name
                if info
                else None
            ),
        ),
    )
    rendered = repo / plan.model_name
    vdir = staging / "version"
    (rendered / str(version)).rename(vdir)
    (vdir / "hf").symlink_to(source, target_is_directory=True)
    if info is not None:
        shutil.copytree(plan.fake_quant_dir, vdir / fake_quant_name)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, vdir / name)
    shutil.copyfile(rendered / "config.pbtxt", vdir / mf.VERSION_CONFIG)  # this version's own
    started = time.monotonic()
    manifest = mf.Manifest(
        profile=mf.Profile.from_plan(plan),
        files=mf.hash_tree(vdir),  # follows the `hf` link: the weights are checksummed too
        quality=quality.to_dict() if quality is not None else None,
        build_seconds=time.monotonic() - started,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        host=socket.gethostname(),
        extra={"fake_quant": {"dir": fake_quant_name, **asdict(info)}} if info else {},
    )
    mf.write(vdir, manifest)
    return (rendered / "config.pbtxt").read_text(), manifest
