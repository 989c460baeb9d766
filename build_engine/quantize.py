"""ModelOpt post-training quantization on CPU, quality measurement, TensorRT-LLM checkpoint export.

One pass over the model, because the quality gate must see the fake-quantized model that
calibration produced: load the HF folder → score the held-out text (base) → cast to the engine's
compute dtype → PTQ with a rich progress bar over the calibration chunks → score again (quantized)
→ write quality.json → `export_tensorrt_llm_checkpoint(...)` → `config.json` +
`rank<N>.safetensors`. The pass/fail decision is the separate `quality` step (quality.py), so a
failing measurement is still recorded.

Dtypes (`checkpoint_dtype`, `score_dtypes`): the checkpoint keeps the model's own dtype
(config.json `dtype`, or `torch_dtype` as transformers 4 writes it), float32 becoming float16, as
TensorRT-LLM's own quantize script does with `--dtype auto` (NVIDIA/TensorRT-LLM
examples/quantization/quantize.py `--dtype` help and tensorrt_llm/quantization/
quantize_by_modelopt.py `quantize_and_export` → `export_tensorrt_llm_checkpoint(...,
getattr(torch, dtype))`; the 1.2.1 tag is not in the stored sources: read at commits
059c97c10c12e948e91676c8db3c9f137b0a2389 and 042c510d33e3ba07ac0e3d1ef810b82198b90e0c). The base
model is scored as shipped (its own dtype), the quantized one in the checkpoint's dtype, which is
what the engine computes in: a bf16 model is not squeezed into fp16, and an fp16 overflow is
measured. `--sku cpu` scores both in float32, the dtype the CPU reference engine serves.

Two ModelOpt APIs are supported, because the quantize step runs in two environments: the project's
own pin (0.47) and the TensorRT-LLM 1.2.x container, whose requirements.txt pins
`nvidia-modelopt[torch]~=0.37.0` (NVIDIA/TensorRT-LLM requirements.txt; the v1.2.1 tag itself is
not in the stored sources: read at commit 000867d9b1ad62f3de1e54e111c094da492a5626, the
TensorRT 10.13 / torch 2.9 line, and the same pin is quoted for v1.3.0rc15). The presets differ:
- up to 0.43 a preset's `quant_cfg` is a dict {pattern: attributes} (0.37's and 0.43's
  modelopt/torch/quantization/config.py); from 0.44 it is a list of rules
  {"quantizer_name": pattern, "cfg": attributes} (0.44's config.py). `quant_config_from` adds the
  KV cache rule in whichever shape the preset has;
- `INT8_WEIGHT_ONLY_CFG` first appears in 0.39; on older releases it is built by hand exactly as
  0.39 defines it (`int8_weight_only_cfg`).
`inference_tensor_parallel` must be given in both (its default 0 divides by zero).
`.ci/modelopt-0.37.sh` runs this module's tests under 0.37 (docs/build.md).

TP/PP > 1 exports one `rank<N>.safetensors` per rank (N < tp x pp) and the mapping in
config.json; the shape is checked first (parallel.py), because ModelOpt's export accepts splits
TensorRT-LLM cannot use. `--sku cpu` with a quantized precision exports no TensorRT-LLM checkpoint:
it saves the fake-quant state the CPU reference engine serves (plan.fake_quant_dir,
triton_models/cpu_engine/fake_quant.py).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autoglm.build_engine.parallel import ModelShape, check_parallelism
from autoglm.build_engine.plan import BuildPlan
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
# The KV cache quantizers added to the preset: the K/V bmm quantizers of ModelOpt's attention
# plugin. FP8: the attributes of 0.37's FP8_KV_CFG and of 0.47's modelopt_recipes
# configs/ptq/units/kv_fp8.yaml (E4M3 = num_bits (4, 3), per tensor). INT8 has no preset in either;
# modelopt/torch/export/quant_utils.py `_compute_kv_cache_dtype` maps 8-bit K/V bmm quantizers to
# kv_cache_quant_algo "INT8".
KV_PATTERN = "*[kv]_bmm_quantizer"
KV_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "fp8": {"num_bits": (4, 3), "axis": None},
    "int8": {"num_bits": 8, "axis": None},
}
# INT4 AWQ quantizes weights in blocks of 128 along the input dimension (INT4_AWQ_CFG
# block_sizes {-1: 128}); TensorRT-LLM's groupwise kernels need whole blocks.
AWQ_BLOCK = 128
# HF `model_type` -> ModelOpt `decoder_type` (modelopt/torch/export/model_utils.py names).
DECODER_TYPES: dict[str, str] = {"llama": "llama", "mistral": "llama", "qwen2": "qwen"}
# Floating dtypes a checkpoint or a scoring pass may use (torch names).
FLOAT_DTYPES: frozenset[str] = frozenset({"float32", "float16", "bfloat16"})


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


def kv_rule(quant_cfg: dict[str, Any] | list[Any], kv_cache_dtype: str) -> None:
    """Add the KV cache quantizer rule to a preset's `quant_cfg`, in its own shape (in place).

    Dict (ModelOpt <= 0.43): `set_quantizer_by_cfg` applies "default" first, then each pattern
    (0.37's conversion.py), so one more key {pattern: attributes}, with `enable` as 0.37's
    FP8_KV_CFG writes it. List (>= 0.44): rules apply in order, so append.
    """
    attributes = copy.deepcopy(KV_ATTRIBUTES[kv_cache_dtype])
    if isinstance(quant_cfg, dict):
        quant_cfg[KV_PATTERN] = {**attributes, "enable": True}
    elif isinstance(quant_cfg, list):
        quant_cfg.append({"quantizer_name": KV_PATTERN, "cfg": attributes})
    else:
        raise QuantizeError(
            f"ModelOpt quant_cfg of type {type(quant_cfg).__name__} is neither the dict "
            f"(<= 0.43) nor the list (>= 0.44) form"
        )


def int8_weight_only_cfg(default_disabled: dict[str, Any]) -> dict[str, Any]:
    """ModelOpt 0.39's INT8_WEIGHT_ONLY_CFG (dict form), for releases that lack it (0.37):
    per-channel INT8 weights, inputs off, plus that release's `_default_disabled_quantizer_cfg`."""
    return {
        "quant_cfg": {
            "*weight_quantizer": {"num_bits": 8, "axis": 0},
            "*input_quantizer": {"enable": False},
            **copy.deepcopy(default_disabled),
        },
        "algorithm": "max",
    }


def quant_config_from(presets: Any, precision: str, kv_cache_dtype: str) -> dict[str, Any]:
    """A private copy of the ModelOpt preset for `precision` with the KV cache rule added.

    `presets` is `modelopt.torch.quantization` (or anything with its preset attributes and a
    `config._default_disabled_quantizer_cfg`): pure, so both API shapes are tested without
    installing either release.
    """
    if precision not in MTQ_CONFIGS:
        raise QuantizeError(f"precision {precision!r} is not a ModelOpt PTQ format")
    name = MTQ_CONFIGS[precision]
    if hasattr(presets, name):
        cfg = copy.deepcopy(getattr(presets, name))
    elif precision == "int8_wo":
        cfg = int8_weight_only_cfg(presets.config._default_disabled_quantizer_cfg)
    else:
        raise QuantizeError(f"this ModelOpt release has no {name} preset for {precision!r}")
    if kv_cache_dtype != "auto":
        kv_rule(cfg["quant_cfg"], kv_cache_dtype)
    return cfg


def model_dtype(config: dict[str, Any]) -> str:
    """The dtype an HF config.json declares (`dtype` in transformers 5, `torch_dtype` before);
    float32 when it declares none (transformers' own default)."""
    declared = config.get("dtype") or config.get("torch_dtype") or "float32"
    name = str(declared).removeprefix("torch.")
    if name not in FLOAT_DTYPES:
        raise QuantizeError(
            f"config.json dtype {declared!r} is not one of {', '.join(sorted(FLOAT_DTYPES))}"
        )
    return name


def checkpoint_dtype(precision: str, source_dtype: str) -> str:
    """The dtype of the TensorRT-LLM checkpoint's unquantized parts ("auto" plugins follow it).

    bf16/fp16 builds are that dtype; quantized builds keep the model's own, float32 becoming
    float16 (TensorRT-LLM's `--dtype auto`, module docstring)."""
    if precision == "bf16":
        return "bfloat16"
    if precision == "fp16":
        return "float16"
    return "float16" if source_dtype == "float32" else source_dtype


def score_dtypes(precision: str, source_dtype: str, *, cpu: bool) -> tuple[str, str]:
    """(base, quantized) scoring dtypes: the model as shipped, and what the engine computes in."""
    if cpu:
        return "float32", "float32"  # the CPU reference engine serves float32 (runner.py)
    return source_dtype, checkpoint_dtype(precision, source_dtype)


def exports_int8_weight_only() -> bool:
    """Whether the installed ModelOpt's export knows INT8 weight-only (QUANTIZATION_INT8_WO in
    modelopt/torch/export/model_config.py, present in 0.47). 0.37 labels every 8-bit weight
    quantizer int8_sq (its quant_utils.py `get_quantization_format`), so its export of an int8_wo
    model claims W8A8_SQ_PER_CHANNEL."""
    from modelopt.torch.export import model_config

    return hasattr(model_config, "QUANTIZATION_INT8_WO")


def relabel_weight_only(config: dict[str, Any]) -> dict[str, Any]:
    """An unquantized TensorRT-LLM checkpoint config relabelled W8A16: TensorRT-LLM quantizes the
    weights per channel itself. Its own quantize script does this for int8_wo, exporting with no
    quantizer enabled (tensorrt_llm/quantization/quantize_by_modelopt.py "Workaround for wo
    quantization", commit 042c510d33e3ba07ac0e3d1ef810b82198b90e0c)."""
    quantization = dict(config.get("quantization") or {})
    quantization["quant_algo"] = "W8A16"
    return {**config, "quantization": quantization}


def quant_config(precision: str, kv_cache_dtype: str) -> dict[str, Any]:
    """`quant_config_from` the installed ModelOpt."""
    import modelopt.torch.quantization as mtq

    return quant_config_from(mtq, precision, kv_cache_dtype)


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
    source_dtype = model_dtype(json.loads((plan.model_dir / "config.json").read_text()))
    base_dtype, quant_dtype = score_dtypes(plan.precision, source_dtype, cpu=plan.is_cpu_fake_quant)
    model = AutoModelForCausalLM.from_pretrained(
        plan.model_dir, dtype=getattr(torch, base_dtype)
    ).eval()
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
        base = _score(model, heldout, progress, f"score base model ({base_dtype})")
        started = time.monotonic()
        model = model.to(getattr(torch, quant_dtype))
        if plan.precision not in GPU_BASE_PRECISIONS:
            model = _ptq(model, plan, calib, progress)
        ptq_seconds = time.monotonic() - started
        quant = _score(model, heldout, progress, f"score {plan.precision} model ({quant_dtype})")
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
            _export(model, decoder, plan, checkpoint_dtype(plan.precision, source_dtype))
    export_seconds = time.monotonic() - started
    write_report(plan.quality_report, result)
    return QuantizeResult(out, result, len(calib), ptq_seconds, export_seconds)


def _export(model: torch.nn.Module, decoder: str, plan: BuildPlan, dtype: str) -> None:
    import modelopt.torch.quantization as mtq
    import torch
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    out = plan.checkpoint_dir
    out.mkdir(parents=True, exist_ok=True)
    # A previous export with more ranks would leave rank files trtllm-build then picks up.
    for old in [out / "config.json", *out.glob("rank*.safetensors")]:
        old.unlink(missing_ok=True)
    by_label = plan.precision == "int8_wo" and not exports_int8_weight_only()
    if by_label:
        mtq.disable_quantizer(model, "*")  # the gate has scored it; export full precision
    export_tensorrt_llm_checkpoint(
        model,
        decoder_type=decoder,
        dtype=getattr(torch, dtype),
        export_dir=out,
        inference_tensor_parallel=plan.tp,
        inference_pipeline_parallel=plan.pp,
    )
    if by_label:
        config = out / "config.json"
        config.write_text(json.dumps(relabel_weight_only(json.loads(config.read_text())), indent=4))


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
