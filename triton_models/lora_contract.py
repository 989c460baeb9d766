"""The LoRA tensors of the TensorRT-LLM backend, and its answer for an adapter it has not cached.

Imported by the façade (which sends an adapter with a request), by the adapter registry
(build_engine/adapters.py, which converts a PEFT adapter into these arrays) and by the CPU
reference engine (which applies the same arrays), so all three agree on one layout.

Sources (TensorRT-LLM, pinned release 1.2.1; newest stored versions of each file):
* The three inputs: `triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt`,
  NVIDIA/TensorRT-LLM commit 0c8de69a1ca6213eebb20a51873890ff128666c2 (reproduced in
  templates/tensorrt_llm/config.pbtxt): `lora_task_id` TYPE_UINT64 dims [1], `lora_weights`
  TYPE_FP16 dims [-1, -1], `lora_config` TYPE_INT32 dims [-1, 3], all optional. The backend's
  docs (`docs/lora.md` of triton-inference-server/tensorrtllm_backend, now
  `triton_backend/docs/lora.md`): the first request of a task carries all three, later ones
  only `lora_task_id`; the cache evicts the least recently used task.
* The rows: `lora_config[i] = [module_id, layer_idx, adapter_size]` and `lora_weights[i]` the
  module's in-weights [rank, hidden_in] flattened, then its out-weights [hidden_out, rank]
  flattened (already multiplied by lora_alpha / rank), zero-padded to the longest row:
  `examples/hf_lora_convert.py`, NVIDIA/TensorRT-LLM commit
  05316d3313360012536ace46c781518f5afae75e (`convert_hf_model`).
* The module ids: `LoraManager.LORA_MODULE_IDS`, `tensorrt_llm/lora_manager.py`,
  NVIDIA/TensorRT-LLM commit 30e6fb55eb2a1dc42ae875213e83f00008422330 (0-7 are the same in
  every stored version; C++ `LoraModule::ModuleType`, cpp/include/tensorrt_llm/runtime/
  loraModule.h), and hf_lora_convert.py's `hf_modules_to_trtllm_modules` for the HF names.
* The not-cached answer: `PeftCacheManager::addRequestPeft`,
  `cpp/tensorrt_llm/batch_manager/peftCacheManager.cpp`, NVIDIA/TensorRT-LLM commit
  9df6d722b0202549c3ac13add233baebdd12f8d8, thrown as `PeftTaskNotCachedException` and sent
  back as the request's error (asserted verbatim by the executor tests,
  cpp/tests/executor/executorTest.cpp: "LoRA task 10 not found in cache. Please send LoRA
  weights with request").
"""

from __future__ import annotations

import re

from autoglm.triton_models.contract import TensorSpec

# [batch, 1] -> reshaped to a scalar per request by the backend. A 64-bit id; the registry
# hands out 63-bit ones (build_engine/adapters.py) so a signed reader is safe too.
LORA_TASK_ID = TensorSpec("lora_task_id", "TYPE_UINT64", (1,), optional=True)
# [batch, rows, width]: one row per (layer, module), see LORA_CONFIG.
LORA_WEIGHTS = TensorSpec("lora_weights", "TYPE_FP16", (-1, -1), optional=True)
# [batch, rows, 3]: [module_id, layer_idx, adapter_size] per row of LORA_WEIGHTS.
LORA_CONFIG = TensorSpec("lora_config", "TYPE_INT32", (-1, 3), optional=True)

LORA_INPUTS: tuple[TensorSpec, ...] = (LORA_TASK_ID, LORA_WEIGHTS, LORA_CONFIG)
LORA_INPUTS_BY_NAME = {t.name: t for t in LORA_INPUTS}

# Columns of a lora_config row.
CONFIG_MODULE_ID, CONFIG_LAYER, CONFIG_RANK = 0, 1, 2

# LoraManager.LORA_MODULE_IDS (the decoder-only ones; cross-attention, MoE and Mamba ids exist
# too but no model we serve has those modules).
MODULE_IDS: dict[str, int] = {
    "attn_qkv": 0,
    "attn_q": 1,
    "attn_k": 2,
    "attn_v": 3,
    "attn_dense": 4,
    "mlp_h_to_4h": 5,
    "mlp_4h_to_h": 6,
    "mlp_gate": 7,
}
# hf_lora_convert.py's hf_modules_to_trtllm_modules for Llama-style models. Note TensorRT-LLM's
# naming: gate_proj is mlp_h_to_4h and up_proj is mlp_gate.
HF_TO_TRTLLM: dict[str, str] = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_dense",
    "gate_proj": "mlp_h_to_4h",
    "up_proj": "mlp_gate",
    "down_proj": "mlp_4h_to_h",
}
TRTLLM_TO_HF: dict[str, str] = {v: k for k, v in HF_TO_TRTLLM.items()}
HF_MODULE_BY_ID: dict[int, str] = {MODULE_IDS[v]: k for k, v in HF_TO_TRTLLM.items()}

# The executor's error for a request with `lora_task_id` alone whose task is not in its cache.
NOT_CACHED_TEMPLATE = (
    "LoRA task {task_id} not found in cache. Please send LoRA weights with request"
)
# Matches it inside a longer message (Triton may prefix the backend's text).
NOT_CACHED_PATTERN = re.compile(
    r"LoRA task ([0-9]+) not found in cache\. Please send LoRA weights with request"
)


def not_cached_message(task_id: int) -> str:
    """The executor's exact text for an uncached task id."""
    return NOT_CACHED_TEMPLATE.format(task_id=task_id)


def not_cached_task(message: str) -> int | None:
    """The task id if `message` is the executor's not-cached error, else None (the façade
    resends the weights once on it)."""
    found = NOT_CACHED_PATTERN.search(message)
    return int(found.group(1)) if found else None
