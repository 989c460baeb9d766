"""One cpu fp8 (+ fp8 KV) fake-quant build of the real SmolLM2 per test session.

Shared by tests/build_engine/test_fake_quant.py and tests/integration/test_fake_quant.py
(import this module, call `fp8_build`): PTQ runs once however many modules ask for it.
Cheap settings, as test_quantize.py: 4 calibration chunks x 64 tokens, 2 held-out x 128.
PTQ and scoring run with one torch thread, as the CPU reference engine serves (torch_threads=1):
fake-quant numerics depend on the thread count (docs/build.md), so comparing the build's
measurement with the served model is only exact at the same count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from autoglm.build_engine.plan import BuildPlan
from autoglm.build_engine.quality import QualityResult, QualityThresholds, apply_thresholds
from autoglm.build_engine.quantize import QuantizeResult, QuantizeSettings, quantize

SETTINGS = QuantizeSettings(calib_chunks=4, calib_len=64, eval_chunks=2, eval_len=128)


@dataclass(frozen=True, slots=True)
class FakeQuantBuild:
    plan: BuildPlan  # model_repo set: install() puts versions there
    result: QuantizeResult
    quality: QualityResult  # judged by the default gate (what `quality` writes)


_BUILDS: dict[Path, FakeQuantBuild] = {}


def fp8_build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> FakeQuantBuild:
    if model_dir not in _BUILDS:
        base = tmp_path_factory.mktemp("fake-quant-fp8")
        plan = BuildPlan(
            model_dir=model_dir,
            sku="cpu",
            precision="fp8",
            kv_cache_dtype="fp8",
            output_dir=base / "build",
            model_repo=base / "model_repository",
            model_name="smollm2-fp8",
        )
        torch.set_num_threads(1)
        result = quantize(plan, SETTINGS)
        quality = apply_thresholds(result.quality, QualityThresholds())
        _BUILDS[model_dir] = FakeQuantBuild(plan, result, quality)
    return _BUILDS[model_dir]
