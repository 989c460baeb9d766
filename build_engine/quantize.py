"""ModelOpt post-training quantization on CPU, quality measurement, TensorRT-LLM checkpoint export.

One pass over the model, because the quality gate must see the fake-quantized model that
calibration produced: load the HF folder (fp32) → score the held-out text (base) → PTQ with a
rich progress bar over the calibration chunks → score again (quantized) → write quality.json →
`export_tensorrt_llm_checkpoint(...)` → `config.json` + `rank<N>.safetensors`. The pass/fail
decision is the separate `quality` step (quality.py), so a failing measurement is still recorded.

ModelOpt 0.47 facts (facts.md): a quant config's `quant_cfg` is a list of rules (append, do not
`.update()`); `inference_tensor_parallel` must be given (its default 0 divides by zero).

TP/PP > 1 exports one `rank<N>.safetensors` per rank (N < tp x pp) and the mapping in
config.json; the shape is checked first (parallel.py), because ModelOpt's export accepts splits
TensorRT-LLM cannot use. `--sku cpu` with a quantized precision exports no TensorRT-LLM checkpoint:
it saves the fake-quant state the CPU reference engine serves (plan.fake_quant_dir,
triton_models/cpu_engine/fake_quant.py).
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autoglm.build_engine.parallel import ModelShape, check_parallelism
from autoglm.build_engine.plan import BuildPlan, export_dtype
from autoglm.build_engine.quality import (
    QualityResult,
    QualityThresholds,
    judge,
    score,
    write_report,
)
from autoglm.build_engine.skus import GPU_BASE_PRECISIONS
from autoglm.build_engine.texts import (
    DEFAULT_CALIBRATION,
    DEFAULT_HELDOUT,
    load_texts,
    token_chunks,
)

if TYPE_CHECKING:
    import torch

# precision -> name of the ModelOpt preset in modelopt.torch.quantization.
MTQ_CONFIGS: dict[str, str] = {
    "fp8": "FP8_DEFAULT_CFG",
    "int8_sq": "INT8_SMOOTHQUANT_CFG",
    "int8_wo": "INT8_WEIGHT_ONLY_CFG",
    "int4_awq": "INT4_AWQ_CFG",
    "nvfp4": "NVFP4_DEFAULT_CFG",
}
# KV cache rules appended to the preset. FP8: the rule of modelopt_recipes
# configs/ptq/units/kv_fp8.yaml (E4M3 = num_bits (4, 3), per tensor). INT8 has no preset in 0.47;
# modelopt/torch/export/quant_utils.py `_compute_kv_cache_dtype` maps 8-bit K/V bmm quantizers
# to kv_cache_quant_algo "INT8".
KV_RULES: dict[str, dict[str, Any]] = {
    "fp8": {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}},
    "int8": {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": 8, "axis": None}},
}
# INT4 AWQ quantizes weights in blocks of 128 along the input dimension (INT4_AWQ_CFG
# block_sizes {-1: 128}); TensorRT-LLM's groupwise kernels need whole blocks.
AWQ_BLOCK = 128
# HF `model_type` -> ModelOpt `decoder_type` (modelopt/torch/export/model_utils.py names).
DECODER_TYPES: dict[str, str] = {"llama": "llama", "mistral": "llama", "qwen2": "qwen"}


class QuantizeError(ValueError):
    """The model or the request cannot be quantized as asked."""


@dataclass(frozen=True, slots=True)
class QuantizeSettings:
    calib_chunks: int = 16
    calib_len: int = 256
    eval_chunks: int = 8
    eval_len: int = 256
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    checkpoint_dir: Path  # what was written: the TensorRT-LLM checkpoint, or the fake-quant dir
    quality: QualityResult
    calib_chunks: int
    ptq_seconds: float
    export_seconds: float


def check_quantizable(precision: str, hidden_size: int) -> None:
    if precision == "int4_awq" and hidden_size % AWQ_BLOCK != 0:
        raise QuantizeError(
            f"int4_awq needs hidden size % {AWQ_BLOCK} == 0 (AWQ block size); this model's "
            f"hidden size is {hidden_size} ({hidden_size} % {AWQ_BLOCK} = "
            f"{hidden_size % AWQ_BLOCK}): use int8_wo or int8_sq instead"
        )


def decoder_type(model_type: str) -> str:
    try:
        return DECODER_TYPES[model_type]
    except KeyError:
        raise QuantizeError(
            f"model_type {model_type!r} has no known ModelOpt decoder_type "
            f"(known: {', '.join(sorted(DECODER_TYPES))})"
        ) from None


def quant_config(precision: str, kv_cache_dtype: str) -> dict[str, Any]:
    """A private copy of the ModelOpt preset with the KV cache rule appended."""
    import modelopt.torch.quantization as mtq

    if precision not in MTQ_CONFIGS:
        raise QuantizeError(f"precision {precision!r} is not a ModelOpt PTQ format")
    cfg = copy.deepcopy(getattr(mtq, MTQ_CONFIGS[precision]))
    if kv_cache_dtype != "auto":
        cfg["quant_cfg"].append(copy.deepcopy(KV_RULES[kv_cache_dtype]))
    return cfg


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def quantize(
    plan: BuildPlan,
    settings: QuantizeSettings = QuantizeSettings(),
    *,
    console: Console | None = None,
) -> QuantizeResult:
    """Run PTQ (or a plain conversion for bf16/fp16) and export the TensorRT-LLM checkpoint
    (or, for `--sku cpu`, save the fake-quant state)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plan.validate()
    if plan.sku == "cpu" and not plan.is_cpu_fake_quant:
        raise QuantizeError("--sku cpu --precision fp32 serves the HF folder: nothing to quantize")
    check_parallelism(plan.tp, plan.pp, ModelShape.from_model_dir(plan.model_dir))
    console = console or Console(stderr=True)
    tokenizer = AutoTokenizer.from_pretrained(plan.model_dir)
    model = AutoModelForCausalLM.from_pretrained(plan.model_dir, dtype=torch.float32).eval()
    check_quantizable(plan.precision, model.config.hidden_size)
    decoder = decoder_type(model.config.model_type)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    calib = token_chunks(
        encode,
        load_texts(plan.calib_path or DEFAULT_CALIBRATION),
        chunk_len=settings.calib_len,
        max_chunks=settings.calib_chunks,
    )
    heldout = token_chunks(
        encode,
        load_texts(plan.heldout_path or DEFAULT_HELDOUT),
        chunk_len=settings.eval_len,
        max_chunks=settings.eval_chunks,
    )
    # The fake-quant state is what PTQ added or changed: keep the weights as they were.
    before = (
        {k: v.detach().clone() for k, v in model.state_dict().items()}
        if plan.is_cpu_fake_quant
        else {}
    )
    with _progress(console) as progress:
        base = _score(model, heldout, progress, "score base model")
        started = time.monotonic()
        if plan.precision in GPU_BASE_PRECISIONS:
            model = model.to(getattr(torch, export_dtype(plan.precision)))
        else:
            model = _ptq(model, plan, calib, progress)
        ptq_seconds = time.monotonic() - started
        quant = _score(model, heldout, progress, f"score {plan.precision} model")
    result = judge(plan.precision, base, quant, settings.thresholds)
    started = time.monotonic()
    if plan.is_cpu_fake_quant:
        out = plan.fake_quant_dir
        with console.status(f"save ModelOpt fake-quant state → {out}"):
            _save_fake_quant(model, before, plan)
    else:
        out = plan.checkpoint_dir
        with console.status(
            f"export TensorRT-LLM checkpoint ({plan.world_size} rank(s): tp={plan.tp}, "
            f"pp={plan.pp}) → {out}"
        ):
            _export(model, decoder, plan)
    export_seconds = time.monotonic() - started
    write_report(plan.quality_report, result)
    return QuantizeResult(out, result, len(calib), ptq_seconds, export_seconds)


def _export(model: torch.nn.Module, decoder: str, plan: BuildPlan) -> None:
    import torch
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    out = plan.checkpoint_dir
    out.mkdir(parents=True, exist_ok=True)
    # A previous export with more ranks would leave rank files trtllm-build then picks up.
    for old in [out / "config.json", *out.glob("rank*.safetensors")]:
        old.unlink(missing_ok=True)
    export_tensorrt_llm_checkpoint(
        model,
        decoder_type=decoder,
        dtype=getattr(torch, export_dtype(plan.precision)),
        export_dir=out,
        inference_tensor_parallel=plan.tp,
        inference_pipeline_parallel=plan.pp,
    )


def _save_fake_quant(
    model: torch.nn.Module, before: dict[str, torch.Tensor], plan: BuildPlan
) -> None:
    from autoglm.triton_models.cpu_engine import fake_quant

    out = plan.fake_quant_dir
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    fake_quant.save(
        model, before, staging, precision=plan.precision, kv_cache_dtype=plan.kv_cache_dtype
    )
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def _score(
    model: torch.nn.Module, chunks: Sequence[Sequence[int]], progress: Progress, label: str
) -> Any:
    task = progress.add_task(label, total=len(chunks))
    return score(model, chunks, on_chunk=lambda: progress.advance(task))


def _ptq(
    model: torch.nn.Module, plan: BuildPlan, calib: list[list[int]], progress: Progress
) -> torch.nn.Module:
    import modelopt.torch.quantization as mtq
    import torch

    cfg = quant_config(plan.precision, plan.kv_cache_dtype)
    # SmoothQuant / AWQ run the forward loop more than once (statistics, then search); one
    # bar per pass, each over the calibration chunks.
    passes: list[int] = []

    def forward_loop(m: torch.nn.Module) -> None:
        passes.append(
            progress.add_task(
                f"calibrate {plan.precision} (pass {len(passes) + 1})", total=len(calib)
            )
        )
        with torch.no_grad():
            for chunk in calib:
                m(input_ids=torch.tensor([chunk], dtype=torch.long))  # [1, T]
                progress.advance(passes[-1])

    run: Callable[..., torch.nn.Module] = mtq.quantize
    return run(model, cfg, forward_loop=forward_loop)
