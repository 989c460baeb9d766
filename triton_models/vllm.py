"""A Triton vLLM-backend model: config.pbtxt + the version's model.json (vLLM engine arguments).

For models TensorRT-LLM cannot build: AutoGLM-Phone-9B (GLM-4.1V, facts.md). Triton's vLLM
backend (triton-inference-server/vllm_backend at commit 8de0c14, `src/model.py`) reads
`<model>/<version>/model.json` and passes every key to `AsyncEngineArgs(**model.json)`: whatever
is in that file configures the engine. So model.json is rendered from an allow-list, and every
option that lets the engine read local files, fetch URLs, reach the Hugging Face Hub or import
code is refused with an error naming it.

Field names checked against vLLM 0.19.0 (`vllm/engine/arg_utils.py`, `EngineArgs` /
`AsyncEngineArgs` dataclass fields; PyPI wheel vllm-0.19.0, commit 2a69949bd), the vLLM of
`tritonserver:26.04-vllm-python-py3` (Triton's compatibility matrix lists
0.19.0+6bc3197f.nv26.04 for it: triton-inference-server/server
docs/introduction/compatibility.md at 0f963c9a). The list the tests check against is
tests/triton_models/data/vllm_0_19_0_engine_args.txt; `scripts/gpu-acceptance.sh` re-checks
model.json against the vLLM inside the image before Triton starts.

The façade sends images only as base64 bytes of compressed image files in the `image` tensor
(vllm_contract.py), never as URLs or paths: the backend decodes them with Pillow
(`src/utils/request.py`), so the engine needs no media path and no media domain, and none is
allowed here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.contract import TensorSpec
from autoglm.triton_models.render import (
    TEMPLATES,
    check_config_string,
    check_model_name,
    config_proto,
    render_config,
)

if TYPE_CHECKING:  # imported where a config is checked (render.config_proto)
    from tritonclient.grpc import model_config_pb2

TEMPLATE: Path = TEMPLATES / "vllm" / "config.pbtxt"
# vllm_backend src/model.py: _VLLM_ENGINE_ARGS_FILENAME, read from pb_utils.get_model_dir()
# (the version directory; samples/model_repository/vllm_model/1/model.json).
ENGINE_ARGS_FILE = "model.json"

# AutoGLM-Phone-9B as its authors serve it (facts.md: `--max-model-len 25480
# --limit-mm-per-prompt '{"image":10}' --mm-processor-kwargs '{"max_pixels":5000000}'`).
AUTOGLM_MAX_MODEL_LEN = 25_480
AUTOGLM_MAX_IMAGES = 10
AUTOGLM_MAX_PIXELS = 5_000_000
# GLM-4.1V's image processor reads its pixel budget from `size` = {"shortest_edge": min pixels,
# "longest_edge": max pixels} (both are pixel *areas*): transformers' Glm4vImageProcessor and
# vLLM 0.19.0 vllm/model_executor/models/glm4_1v.py `_get_image_max_pixels` (which sizes the
# memory profile's largest image from it). The processor has no `max_pixels` argument, so the
# authors' `{"max_pixels": ...}` alone likely leaves the default budget (28*28*15000 pixels,
# ~15,000 tokens an image) in force; both keys are rendered. 112*112 is the processor's default
# minimum.
GLM4V_MIN_PIXELS = 112 * 112

# What vLLM accepts for the values we render (vLLM 0.19.0: vllm/config/model.py ModelDType,
# vllm/config/cache.py CacheDType; quantization "fp8" = Fp8Config, online when the checkpoint
# is 16-bit: vllm/model_executor/layers/quantization/fp8.py).
DTYPES: frozenset[str] = frozenset({"bfloat16", "float16"})
QUANTIZATIONS: frozenset[str | None] = frozenset({None, "fp8"})
KV_CACHE_DTYPES: frozenset[str] = frozenset({"auto", "fp8"})

# Keys the renderer writes from VllmEngineConfig fields (each one an EngineArgs field).
RENDERED_KEYS: frozenset[str] = frozenset(
    {
        "model",
        "tokenizer",
        "served_model_name",
        "trust_remote_code",
        "load_format",
        "dtype",
        "quantization",
        "kv_cache_dtype",
        "seed",
        "max_model_len",
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enforce_eager",
        "limit_mm_per_prompt",
        "mm_processor_kwargs",
        "enable_prefix_caching",
        "enable_log_requests",
    }
)
# Tuning knobs an operator may add (`extra`); none reads a file, a URL or code.
EXTRA_KEYS: frozenset[str] = frozenset(
    {
        "block_size",
        "enable_chunked_prefill",
        "disable_log_stats",
        "disable_custom_all_reduce",
        "disable_cascade_attn",
        "async_scheduling",
        "max_cudagraph_capture_size",
        "max_logprobs",
        "mm_processor_cache_gb",
        "mm_encoder_tp_mode",
    }
)
ALLOWED_KEYS: frozenset[str] = RENDERED_KEYS | EXTRA_KEYS

_HUB = "reaches the Hugging Face Hub; the engine loads only the verified local folder "
_HUB += "(and runs with HF_HUB_OFFLINE=1)"
_CODE = "imports Python code by name or path into the engine"
_NET = "connects the engine to other hosts"
# Options refused by name, with the reason (all EngineArgs fields of vLLM 0.19.0).
FORBIDDEN: Mapping[str, str] = {
    "allowed_local_media_path": "lets a request make the engine read files under that "
    "directory (the model authors' guide passes '/': never copy it); the façade sends image "
    "bytes, never paths",
    "allowed_media_domains": "lets the engine fetch image URLs from those domains; the façade "
    "sends image bytes, never URLs",
    "media_io_kwargs": "configures the engine's media fetching and decoding; the façade sends "
    "verified image bytes",
    "download_dir": _HUB,
    "hf_token": _HUB,
    "revision": _HUB,
    "code_revision": _HUB,
    "tokenizer_revision": _HUB,
    "ignore_patterns": _HUB,
    "hf_config_path": "reads the model config from outside the verified folder",
    "generation_config": "reads a generation config from outside the verified folder",
    "model_weights": "loads weights from outside the verified folder",
    "model_loader_extra_config": "passes loader options (object-storage URIs and credentials)",
    "speculative_config": "loads a draft model from outside the verified folder",
    "enable_lora": "loads adapters from paths outside the verified folder",
    "default_mm_loras": "loads adapters from paths outside the verified folder",
    "pt_load_map_location": "only used with pickled (.pt/.bin) weights, which are refused",
    "otlp_traces_endpoint": "sends traces to a URL; tracing is the façade's (and Triton's)",
    "kv_transfer_config": _NET,
    "kv_events_config": _NET,
    "ec_transfer_config": _NET,
    "weight_transfer_config": _NET,
    "data_parallel_address": _NET,
    "master_addr": _NET,
    "worker_cls": _CODE,
    "worker_extension_cls": _CODE,
    "scheduler_cls": _CODE,
    "logits_processors": _CODE,
    "reasoning_parser_plugin": _CODE,
    "io_processor_plugin": _CODE,
    "distributed_executor_backend": _CODE + " (a class or a Ray cluster)",
    "profiler_config": "writes profiler traces to a directory",
    "hf_overrides": "rewrites the verified checkpoint's config",
}
# Refused values of allowed keys (the key is fine, the value is not).
TRUST_REMOTE_CODE_WHY = (
    "runs Python code shipped inside the checkpoint folder; GLM-4.1V is built into vLLM and "
    "transformers, so no remote code is needed"
)
# vLLM 0.19.0 vllm/config/load.py LoadConfig.load_format: "auto" falls back to pickled
# PyTorch .bin files when no safetensors are found, "pt"/"npcache" load pickles,
# "runai_streamer"/"tensorizer" stream from object storage, "dummy" serves random weights.
LOAD_FORMATS: frozenset[str] = frozenset({"safetensors"})


class EngineArgsError(ValueError):
    """model.json would carry a refused option or a bad value (the message names the key)."""


def check_engine_args(args: Mapping[str, object]) -> None:
    """EngineArgsError naming the first key that is refused, unknown or badly valued."""
    for key in sorted(args):
        if key in FORBIDDEN:
            raise EngineArgsError(f"engine arg {key!r} is refused: it {FORBIDDEN[key]}")
        if key not in ALLOWED_KEYS:
            raise EngineArgsError(
                f"engine arg {key!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_KEYS))})"
            )
    if args.get("trust_remote_code") is not False:
        raise EngineArgsError(
            f"engine arg 'trust_remote_code' must be false: true {TRUST_REMOTE_CODE_WHY}"
        )
    if args.get("load_format") not in LOAD_FORMATS:
        raise EngineArgsError(
            f"engine arg 'load_format' must be one of {sorted(LOAD_FORMATS)}, got "
            f"{args.get('load_format')!r}: other formats load pickles, stream from object "
            "storage or serve random weights"
        )
    for key in ("model", "tokenizer"):
        value = args.get(key)
        if not isinstance(value, str) or not Path(value).is_absolute():
            raise EngineArgsError(
                f"engine arg {key!r} must be an absolute local path (a Hub id would be "
                f"downloaded), got {value!r}"
            )
    if args.get("tokenizer") != args.get("model"):
        raise EngineArgsError(
            "engine arg 'tokenizer' must be the model folder itself (the verified checkpoint)"
        )


@dataclass(frozen=True, slots=True)
class VllmEngineConfig:
    """One Triton vLLM model: the config.pbtxt values and the engine arguments of model.json."""

    # The checkpoint folder as Triton sees it (absolute; verified by the build profile).
    model_dir: Path
    model_name: str = "autoglm-phone-9b"  # the Triton model (repository folder)
    served_model_name: str = "autoglm-phone-9b"  # vLLM's name in its logs and metrics
    max_model_len: int = AUTOGLM_MAX_MODEL_LEN
    max_images: int = AUTOGLM_MAX_IMAGES
    max_pixels: int = AUTOGLM_MAX_PIXELS
    tensor_parallel_size: int = 1
    # vLLM's default (vllm/config/cache.py CacheConfig.gpu_memory_utilization, 0.9): the share
    # of each GPU for weights, activations and the KV cache.
    gpu_memory_utilization: float = 0.90
    max_num_seqs: int = 8
    # vLLM's OpenAI-server default on large GPUs (arg_utils.py
    # _set_default_max_num_seqs_and_batched_tokens_args: 8192); above one image of
    # `max_pixels` (~6,400 tokens), so an image's encoder output is never split.
    max_num_batched_tokens: int = 8192
    dtype: str = "bfloat16"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    # CUDA graphs on (vLLM's default): faster decoding for some GPU memory.
    enforce_eager: bool = False
    seed: int = 0
    enable_prefix_caching: bool = True
    version: int = 1
    health_check: bool = True
    report_metrics: bool = True
    # Operator tuning (EXTRA_KEYS only).
    extra: Mapping[str, object] = field(default_factory=dict)

    def validate(self) -> None:
        """ValueError naming the first bad field."""
        check_model_name(self.model_name)
        check_config_string("served_model_name", self.served_model_name)
        check_config_string("model_dir", str(self.model_dir))
        if not self.model_dir.is_absolute():
            raise ValueError(f"model_dir: {self.model_dir} must be an absolute path")
        if not (self.model_dir / "config.json").is_file():
            raise ValueError(f"model_dir: {self.model_dir} holds no config.json")
        for name in (
            "max_model_len",
            "max_images",
            "max_pixels",
            "tensor_parallel_size",
            "max_num_seqs",
            "max_num_batched_tokens",
            "version",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} must be an integer >= 1")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed: {self.seed!r} must be in [0, 2**63)")
        util = self.gpu_memory_utilization
        if not (isinstance(util, float) and math.isfinite(util) and 0 < util <= 1):
            raise ValueError(f"gpu_memory_utilization: {util!r} must be in (0, 1]")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization: {self.quantization!r} is not None or 'fp8'")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype: {self.kv_cache_dtype!r} is not one of {sorted(KV_CACHE_DTYPES)}"
            )
        if self.max_pixels < GLM4V_MIN_PIXELS:
            raise ValueError(f"max_pixels: {self.max_pixels} is below {GLM4V_MIN_PIXELS}")
        overlap = sorted(set(self.extra) & RENDERED_KEYS)
        if overlap:
            raise EngineArgsError(
                f"engine arg {overlap[0]!r} is set by the profile's own field, not as an extra"
            )

    def engine_args(self) -> dict[str, object]:
        """model.json's content, validated (EngineArgsError / ValueError naming the field)."""
        self.validate()
        model = str(self.model_dir)
        args: dict[str, object] = {
            "model": model,
            "tokenizer": model,
            "served_model_name": self.served_model_name,
            "trust_remote_code": False,
            "load_format": "safetensors",
            "dtype": self.dtype,
            "kv_cache_dtype": self.kv_cache_dtype,
            "seed": self.seed,
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "enforce_eager": self.enforce_eager,
            "limit_mm_per_prompt": {"image": self.max_images},
            "mm_processor_kwargs": {
                "max_pixels": self.max_pixels,
                "size": {"shortest_edge": GLM4V_MIN_PIXELS, "longest_edge": self.max_pixels},
            },
            "enable_prefix_caching": self.enable_prefix_caching,
            # AsyncEngineArgs: request logging prints prompts (user data) at DEBUG level.
            "enable_log_requests": False,
        }
        if self.quantization is not None:
            args["quantization"] = self.quantization
        args.update(self.extra)
        check_engine_args(args)
        return args


def render_engine_args(cfg: VllmEngineConfig) -> str:
    """model.json text: sorted keys, so a rendered file has one spelling (and one checksum)."""
    return json.dumps(cfg.engine_args(), indent=2, sort_keys=True) + "\n"


def _tensor_text(t: TensorSpec, *, is_input: bool) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    optional = " optional: true" if is_input and t.optional else ""
    return f'  {{ name: "{t.name}" data_type: {t.data_type} dims: [ {dims} ]{optional} }}'


def _tensors_block(kind: str, tensors: tuple[TensorSpec, ...]) -> str:
    lines = [_tensor_text(t, is_input=kind == "input") for t in tensors]
    return f"{kind} [\n" + ",\n".join(lines) + "\n]"


def config_values(cfg: VllmEngineConfig) -> dict[str, str]:
    """The template's placeholders (the tensors come from vllm_contract, not a second copy)."""
    cfg.validate()
    return {
        "model_name": cfg.model_name,
        "inputs": _tensors_block("input", vc.INPUTS),
        "outputs": _tensors_block("output", vc.OUTPUTS),
        "health_check": "true" if cfg.health_check else "false",
        "report_metrics": "true" if cfg.report_metrics else "false",
    }


def render_vllm_model(repo: Path, cfg: VllmEngineConfig) -> model_config_pb2.ModelConfig:
    """Write `<repo>/<model_name>/config.pbtxt` and `<version>/model.json`; returns the config.

    Both are rendered (and checked) before anything is written, and each file is replaced in
    one step, as `repository.render_cpu_model` does.
    """
    engine_json = render_engine_args(cfg)
    text, parsed = render_config(TEMPLATE, config_values(cfg))
    mismatches = contract_mismatches(parsed)
    if mismatches:  # the template itself is wrong: never write it
        raise ValueError(f"{TEMPLATE}: " + "; ".join(mismatches))
    model_root = repo / cfg.model_name
    version_dir = model_root / str(cfg.version)
    version_dir.mkdir(parents=True, exist_ok=True)
    for path, content in (
        (version_dir / ENGINE_ARGS_FILE, engine_json),
        (model_root / "config.pbtxt", text),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
    return parsed


def contract_mismatches(config: model_config_pb2.ModelConfig) -> list[str]:
    """How a vLLM-backend model config differs from vllm_contract ([] when it matches).

    Works on a rendered config and on the one a running Triton reports for the loaded model
    (after the backend's auto-complete): the façade or `gpu-acceptance.sh` can refuse to serve
    a model whose tensors are not the ones it sends and reads.
    """
    pb = config_proto()
    problems: list[str] = []
    if config.backend != "vllm":
        problems.append(f"backend is {config.backend!r}, not 'vllm'")
    if config.max_batch_size != 0:
        problems.append(f"max_batch_size is {config.max_batch_size}, the backend needs 0")
    if not config.model_transaction_policy.decoupled:
        problems.append("not decoupled: the backend streams (decoupled transaction policy)")
    kinds = [g.kind for g in config.instance_group]
    if any(k != pb.ModelInstanceGroup.KIND_MODEL for k in kinds):
        problems.append("instance_group must be KIND_MODEL (the engine places itself on GPUs)")
    for kind, declared, specs in (
        ("input", config.input, vc.INPUTS),
        ("output", config.output, vc.OUTPUTS),
    ):
        by_name = {t.name: t for t in declared}
        for spec in specs:
            t = by_name.get(spec.name)
            if t is None:
                problems.append(f"{kind} {spec.name!r} is missing")
                continue
            dtype = pb.DataType.Name(t.data_type)
            if dtype != spec.data_type or tuple(t.dims) != spec.dims:
                problems.append(
                    f"{kind} {spec.name!r} is {dtype} {list(t.dims)}, the contract says "
                    f"{spec.data_type} {list(spec.dims)}"
                )
            if kind == "input" and t.optional != spec.optional:
                problems.append(f"input {spec.name!r} optional={t.optional}, not {spec.optional}")
    return problems
