"""Triton model config of the GPU engine: TensorRT-LLM 1.2 `tensorrtllm` backend, TensorRT engines.

`TensorRTLLMConfig` holds one value per placeholder of `templates/tensorrt_llm/config.pbtxt` and
renders it strictly (see `render.py`). The template reproduces NVIDIA/TensorRT-LLM
`triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt` at commit
0c8de69a1ca6213eebb20a51873890ff128666c2 (version 1.2.0rc8, the newest stored version; pinned
release: 1.2.1). Allowed values and backend defaults cited below come from the backend source at
the same commit: `triton_backend/inflight_batcher_llm/src/model_instance_state.cc`
(getBatchingTypeFromParams, getSchedulerConfigFromParams, getKvCacheConfigFromParams, the
ModelInstanceState constructor) and `src/model_state.cc` (GetParameter, gpu_device_ids parsing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from autoglm.triton_models.render import (
    TEMPLATES,
    check_config_string,
    check_model_name,
    config_proto,
    render_config,
)

TEMPLATE: Path = TEMPLATES / "tensorrt_llm" / "config.pbtxt"

# getBatchingTypeFromParams: "V1"/"v1" -> static batching, "inflight_batching" and
# "inflight_fused_batching" -> in-flight batching; anything else throws at model load.
BATCHING_STRATEGIES: frozenset[str] = frozenset(
    {"inflight_fused_batching", "inflight_batching", "V1", "v1"}
)
# getSchedulerConfigFromParams: only these two; the backend itself defaults to
# guaranteed_no_evict (CapacitySchedulerPolicy::kGUARANTEED_NO_EVICT).
BATCH_SCHEDULER_POLICIES: frozenset[str] = frozenset({"max_utilization", "guaranteed_no_evict"})


@cache
def data_types() -> frozenset[str]:
    """Triton ModelConfig DataType names usable for the data_type placeholders (from the proto,
    imported on first use: render.config_proto)."""
    names = config_proto().DataType.DESCRIPTOR.values_by_name
    return frozenset(name for name in names if name != "TYPE_INVALID")


@dataclass(frozen=True, slots=True)
class TensorRTLLMConfig:
    """Values for the `tensorrt_llm` model config; defaults are for in-flight batched serving."""

    # gpt_model_path: the engine directory (config.json + rank<N>.engine) as seen by Triton.
    engine_dir: Path
    # name; the real file fixes it to "tensorrt_llm", which is what the ensemble/BLS expect.
    model_name: str = "tensorrt_llm"
    # max_batch_size / preferred_batch_size; 64 as in TensorRT-LLM's own fill_template example.
    triton_max_batch_size: int = 64
    # model_transaction_policy.decoupled: needed for streaming (one response per token); the
    # façade calls it with ModelStreamInfer.
    decoupled: bool = True
    # dynamic_batching; 0 as in TensorRT-LLM's fill_template example: the executor batches
    # in flight itself, so a Triton-side delay only adds latency.
    max_queue_delay_microseconds: int = 0
    # default_queue_policy.max_queue_size; 0 is Triton's "no limit" (also forwarded by the
    # backend to the executor as its max queue size).
    max_queue_size: int = 0
    # max_beam_width; backend default 1 (greedy/sampling only). Must not exceed the engine's.
    max_beam_width: int = 1
    # gpt_model_type; see BATCHING_STRATEGIES.
    batching_strategy: str = "inflight_fused_batching"
    # batch_scheduler_policy; the backend's default (see BATCH_SCHEDULER_POLICIES):
    # never pauses/evicts a started request, at the cost of admitting fewer at once.
    batch_scheduler_policy: str = "guaranteed_no_evict"
    # kv_cache_free_gpu_mem_fraction; backend/executor default 0.9.
    kv_cache_free_gpu_mem_fraction: float = 0.9
    # enable_kv_cache_reuse; backend default true (prefix reuse; needs paged context FMHA).
    enable_kv_cache_reuse: bool = True
    # enable_chunked_context; backend default false (needs an engine built with
    # use_paged_context_fmha, the backend warns).
    enable_chunked_context: bool = False
    # exclude_input_in_output; backend default false, we want only generated tokens back.
    exclude_input_in_output: bool = True
    # cancellation_check_period_ms; backend default 100.
    cancellation_check_period_ms: int = 100
    # gpu_device_ids: comma-separated ids of one instance (model_state.cc splits instances on
    # ";"; we render one instance). For a TP×PP engine list TP×PP ids.
    gpu_device_ids: tuple[int, ...] = (0,)
    # data_type placeholders; defaults from TensorRT-LLM's fill_template examples
    # (logits_datatype:TYPE_FP32, encoder_input_features_data_type:TYPE_FP16,
    # prompt_embedding_table_data_type:TYPE_FP16).
    logits_datatype: str = "TYPE_FP32"
    encoder_input_features_data_type: str = "TYPE_FP16"
    prompt_embedding_table_data_type: str = "TYPE_FP16"
    # LoRA cache (getPeftCacheConfigFromParams); the backend's defaults. The two sizes are ranks
    # (adapter_size); max_adapter_size must be at least the engine's --max_lora_rank
    # (build_engine/plan.py): install sets both from it (install.lora_cache_sizes).
    lora_cache_optimal_adapter_size: int = 8
    lora_cache_max_adapter_size: int = 64
    lora_cache_gpu_memory_fraction: float = 0.05
    lora_cache_host_memory_bytes: int = 1 << 30

    def validate(self) -> None:
        """Raise ValueError naming the first field with a bad value."""
        check_model_name(self.model_name)
        check_config_string("engine_dir", str(self.engine_dir))
        _check_int("triton_max_batch_size", self.triton_max_batch_size, minimum=1)
        _check_int("max_queue_delay_microseconds", self.max_queue_delay_microseconds, minimum=0)
        _check_int("max_queue_size", self.max_queue_size, minimum=0)
        _check_int("max_beam_width", self.max_beam_width, minimum=1)
        _check_int("cancellation_check_period_ms", self.cancellation_check_period_ms, minimum=1)
        _check_choice("batching_strategy", self.batching_strategy, BATCHING_STRATEGIES)
        _check_choice(
            "batch_scheduler_policy", self.batch_scheduler_policy, BATCH_SCHEDULER_POLICIES
        )
        _check_fraction("kv_cache_free_gpu_mem_fraction", self.kv_cache_free_gpu_mem_fraction)
        _check_int(
            "lora_cache_optimal_adapter_size", self.lora_cache_optimal_adapter_size, minimum=1
        )
        _check_int(
            "lora_cache_max_adapter_size",
            self.lora_cache_max_adapter_size,
            minimum=self.lora_cache_optimal_adapter_size,
        )
        _check_fraction("lora_cache_gpu_memory_fraction", self.lora_cache_gpu_memory_fraction)
        _check_int("lora_cache_host_memory_bytes", self.lora_cache_host_memory_bytes, minimum=1)
        for name in (
            "decoupled",
            "enable_kv_cache_reuse",
            "enable_chunked_context",
            "exclude_input_in_output",
        ):
            _check_bool(name, getattr(self, name))
        _check_device_ids(self.gpu_device_ids)
        for name in (
            "logits_datatype",
            "encoder_input_features_data_type",
            "prompt_embedding_table_data_type",
        ):
            _check_choice(name, getattr(self, name), data_types())

    def values(self) -> dict[str, str]:
        """The placeholder mapping for the template (validated first)."""
        self.validate()
        return {
            "model_name": self.model_name,
            "triton_max_batch_size": str(self.triton_max_batch_size),
            "decoupled_mode": _pbtxt_bool(self.decoupled),
            "max_queue_delay_microseconds": str(self.max_queue_delay_microseconds),
            "max_queue_size": str(self.max_queue_size),
            "max_beam_width": str(self.max_beam_width),
            "batching_strategy": self.batching_strategy,
            "engine_dir": str(self.engine_dir),
            "batch_scheduler_policy": self.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": repr(float(self.kv_cache_free_gpu_mem_fraction)),
            "exclude_input_in_output": _pbtxt_bool(self.exclude_input_in_output),
            "cancellation_check_period_ms": str(self.cancellation_check_period_ms),
            "enable_kv_cache_reuse": _pbtxt_bool(self.enable_kv_cache_reuse),
            "enable_chunked_context": _pbtxt_bool(self.enable_chunked_context),
            "gpu_device_ids": ",".join(str(i) for i in self.gpu_device_ids),
            "logits_datatype": self.logits_datatype,
            "encoder_input_features_data_type": self.encoder_input_features_data_type,
            "prompt_embedding_table_data_type": self.prompt_embedding_table_data_type,
            "lora_cache_optimal_adapter_size": str(self.lora_cache_optimal_adapter_size),
            "lora_cache_max_adapter_size": str(self.lora_cache_max_adapter_size),
            "lora_cache_gpu_memory_fraction": repr(float(self.lora_cache_gpu_memory_fraction)),
            "lora_cache_host_memory_bytes": str(self.lora_cache_host_memory_bytes),
        }

    def render(self, dest_dir: Path) -> Path:
        """Write `<dest_dir>/config.pbtxt` (validated by Triton's ModelConfig proto); return it."""
        text, _ = render_config(TEMPLATE, self.values())
        dest_dir.mkdir(parents=True, exist_ok=True)
        path = dest_dir / "config.pbtxt"
        path.write_text(text)
        return path


def _pbtxt_bool(value: bool) -> str:
    # Lower case: valid for protobuf text format (decoupled) and for the backend's
    # GetParameter<bool>, which accepts True/true/TRUE/1 and False/false/FALSE/0.
    return "true" if value else "false"


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {value!r} must be an integer >= {minimum}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: {value!r} must be a bool")


def _check_choice(name: str, value: object, allowed: frozenset[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {sorted(allowed)}")


def _check_fraction(name: str, value: object) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}: {value!r} must be a number in (0, 1]")


def _check_device_ids(value: object) -> None:
    # An empty list would render "" and give the executor an empty device list; the backend's
    # own fallback (all visible GPUs) is only reachable by leaving the key out.
    ok = isinstance(value, tuple) and len(value) > 0
    ok = ok and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    if not ok or len(set(value)) != len(value):
        raise ValueError(
            f"gpu_device_ids: {value!r} must be a non-empty tuple of distinct ids >= 0"
        )
