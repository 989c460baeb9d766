"""Compile a TensorRT-LLM checkpoint into engines with `trtllm-build`, on a GPU host only.

An engine only loads on the GPU architecture it was built on ("The engine plan file is generated
on an incompatible device, expecting compute 9.0 got compute 8.9, please rebuild", facts.md), so
the build refuses unless the local GPUs match the target SKU's compute capability. The GPU
detector and the process runner are injected, so both refusals and the exact command line are
tested on CPU.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from autoglm.build_engine.gpus import Detector, GpuInfo, detect_gpus
from autoglm.build_engine.plan import BuildPlan, trtllm_build_argv
from autoglm.build_engine.skus import get_sku

Runner = Callable[[Sequence[str]], int]


class CompileError(RuntimeError):
    """The engine cannot (or could not) be built on this host."""


@dataclass(frozen=True, slots=True)
class CompileResult:
    engine_dir: Path
    argv: tuple[str, ...]
    gpus: tuple[GpuInfo, ...]
    seconds: float
    tensorrt_version: str
    tensorrt_llm_version: str
    host: str


def check_gpus(plan: BuildPlan, gpus: Sequence[GpuInfo]) -> tuple[GpuInfo, ...]:
    """The GPUs the build will use; CompileError when there are none or they do not match."""
    sku = get_sku(plan.sku)
    if not sku.is_gpu:
        raise CompileError("SKU 'cpu' has no engine to compile: install the HF folder directly")
    if not gpus:
        raise CompileError(
            f"no NVIDIA GPU found (nvidia-smi absent or no device): engines for {sku.name} "
            f"(compute capability {sku.cc_string}) must be built on a {sku.name} GPU, inside "
            "NVIDIA's Triton TRT-LLM container (see scripts/gpu-acceptance.sh)"
        )
    wrong = [g for g in gpus if g.compute_capability != sku.compute_capability]
    if wrong:
        found = ", ".join(f"{g.name} (compute {g.cc_string})" for g in wrong)
        raise CompileError(
            f"local GPU compute capability differs from SKU {sku.name}'s "
            f"{sku.cc_string}: {found}; an engine built here would not load on a {sku.name} "
            "(TensorRT: 'engine plan file is generated on an incompatible device')"
        )
    if len(gpus) < plan.world_size:
        raise CompileError(
            f"tp={plan.tp} x pp={plan.pp} needs {plan.world_size} GPUs, found {len(gpus)}"
        )
    return tuple(gpus)


def installed_version(*dists: str) -> str:
    """Version of the first installed distribution among `dists`, or 'n/a'."""
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "n/a"


def _run(argv: Sequence[str]) -> int:
    return subprocess.run(list(argv), check=False).returncode


def compile_engine(
    plan: BuildPlan,
    *,
    detector: Detector = detect_gpus,
    runner: Runner = _run,
) -> CompileResult:
    """Check the GPUs, run `trtllm-build`, and return what the manifest must record."""
    plan.validate()
    gpus = check_gpus(plan, detector())
    if not (plan.checkpoint_dir / "config.json").is_file():
        raise CompileError(f"no TensorRT-LLM checkpoint in {plan.checkpoint_dir}: run quantize")
    argv = trtllm_build_argv(plan)
    started = time.monotonic()
    rc = runner(argv)
    seconds = time.monotonic() - started
    if rc != 0:
        raise CompileError(f"trtllm-build exited with status {rc}: {' '.join(argv)}")
    if not list(plan.engine_dir.glob("rank*.engine")):
        raise CompileError(f"trtllm-build wrote no rank*.engine into {plan.engine_dir}")
    return CompileResult(
        engine_dir=plan.engine_dir,
        argv=argv,
        gpus=gpus,
        seconds=seconds,
        # The engine's config.json records neither (facts.md): take them from the build env.
        tensorrt_version=installed_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
        tensorrt_llm_version=installed_version("tensorrt_llm", "tensorrt-llm"),
        host=socket.gethostname(),
    )
