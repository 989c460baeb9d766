"""Parse one engine request from its tensors (the TensorRT-LLM contract) into plain values.

Pure: takes numpy arrays by tensor name, so it is tested without Triton. Defaults follow the
TensorRT-LLM backend's behaviour when an optional tensor is absent (see contract.py). A bad
tensor is a RequestError, a Refusal naming that tensor (refusal.py): the engine answers it with
INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from autoglm.triton_models import contract
from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models.cpu_engine.lora import LoraRequest
from autoglm.triton_models.cpu_engine.sampling import SamplingConfig
from autoglm.triton_models.refusal import Refusal

# Every input the engine reads: the façade's tensors, then the optional LoRA ones.
ENGINE_INPUTS: tuple[contract.TensorSpec, ...] = contract.INPUTS + lc.LORA_INPUTS


class RequestError(Refusal):
    """A request tensor is missing, malformed or out of range; names the tensor."""


@dataclass(frozen=True, slots=True)
class EngineRequest:
    input_ids: tuple[int, ...]
    max_new_tokens: int
    end_id: int | None
    streaming: bool
    exclude_input_in_output: bool
    sampling: SamplingConfig
    stop_words: tuple[tuple[int, ...], ...] = field(default=())
    return_log_probs: bool = False
    lora: LoraRequest | None = None  # the request's adapter (cpu_engine/lora.py), if any


def _scalar(
    tensors: Mapping[str, np.ndarray], spec: contract.TensorSpec, default: object
) -> object:
    arr = tensors.get(spec.name)
    if arr is None:
        if not spec.optional:
            raise RequestError(spec.name, "required, missing")
        return default
    if arr.size != 1:
        raise RequestError(spec.name, f"must hold one value per request, got shape {arr.shape}")
    return arr.reshape(-1)[0].item()


def parse_max_input_len(value: str) -> int | None:
    """The config parameter `max_input_len`: "" (or absent, in a repository rendered before it
    existed) = no limit; else an integer >= 1 (ValueError naming it)."""
    if not value:
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"max_input_len: {value!r} must be empty or an integer >= 1")
    return limit


def parse_request(
    tensors: Mapping[str, np.ndarray], *, vocab_size: int, max_input_len: int | None = None
) -> EngineRequest:
    """Validate the tensors of one request (batch size 1) and return an EngineRequest.

    `max_input_len` refuses a longer prompt as a TensorRT-LLM engine built with it does
    ("Prompt length (%d) exceeds maximum input length (%d)", `LlmRequest::validate`,
    cpp/tensorrt_llm/batch_manager/llmRequest.cpp, NVIDIA/TensorRT-LLM commit 119c6e60), but
    as a refusal naming `input_ids` (INVALID_ARGUMENT), not an internal error.
    """
    ids_arr = tensors.get(contract.INPUT_IDS.name)
    if ids_arr is None:
        raise RequestError("input_ids", "missing (input embeddings are not supported)")
    if ids_arr.ndim != 2 or ids_arr.shape[0] != 1:
        raise RequestError("input_ids", f"must be [1, tokens], got shape {ids_arr.shape}")
    length = int(_scalar(tensors, contract.INPUT_LENGTHS, 0))  # type: ignore[arg-type]
    if not 0 < length <= ids_arr.shape[1]:
        raise RequestError(
            "input_lengths", f"{length} does not fit input_ids of {ids_arr.shape[1]}"
        )
    if max_input_len is not None and length > max_input_len:
        raise RequestError(
            "input_ids", f"{length} tokens exceed the engine's max_input_len of {max_input_len}"
        )
    ids = tuple(int(t) for t in ids_arr[0, :length])
    if any(t < 0 or t >= vocab_size for t in ids):
        raise RequestError("input_ids", f"holds ids outside the vocabulary [0, {vocab_size})")
    max_new = int(_scalar(tensors, contract.REQUEST_OUTPUT_LEN, 0))  # type: ignore[arg-type]
    if max_new < 1:
        raise RequestError("request_output_len", f"must be >= 1, got {max_new}")
    end_id = _scalar(tensors, contract.END_ID, None)
    seed = _scalar(tensors, contract.SEED, None)
    sampling = SamplingConfig(
        temperature=float(_scalar(tensors, contract.TEMPERATURE, 1.0)),  # type: ignore[arg-type]
        top_k=int(_scalar(tensors, contract.RUNTIME_TOP_K, 0)),  # type: ignore[arg-type]
        top_p=float(_scalar(tensors, contract.RUNTIME_TOP_P, 1.0)),  # type: ignore[arg-type]
        repetition_penalty=float(_scalar(tensors, contract.REPETITION_PENALTY, 1.0)),  # type: ignore[arg-type]
        seed=None if seed is None else int(seed),  # type: ignore[call-overload]
        frequency_penalty=float(_scalar(tensors, contract.FREQUENCY_PENALTY, 0.0)),  # type: ignore[arg-type]
        presence_penalty=float(_scalar(tensors, contract.PRESENCE_PENALTY, 0.0)),  # type: ignore[arg-type]
    )
    try:
        sampling.validate()
    except Refusal as exc:
        raise RequestError(exc.tensor, exc.reason) from None
    stop_words: tuple[tuple[int, ...], ...] = ()
    words_arr = tensors.get(contract.STOP_WORDS_LIST.name)
    if words_arr is not None:
        if words_arr.ndim != 3 or words_arr.shape[:2] != (1, 2):
            raise RequestError("stop_words_list", f"must be [1, 2, n], got shape {words_arr.shape}")
        stop_words = tuple(tuple(w) for w in contract.from_stop_words_list(words_arr[0]) if w)
    return EngineRequest(
        input_ids=ids,
        max_new_tokens=max_new,
        end_id=None if end_id is None else int(end_id),  # type: ignore[call-overload]
        streaming=bool(_scalar(tensors, contract.STREAMING, False)),
        exclude_input_in_output=bool(_scalar(tensors, contract.EXCLUDE_INPUT_IN_OUTPUT, False)),
        sampling=sampling,
        stop_words=stop_words,
        return_log_probs=bool(_scalar(tensors, contract.RETURN_LOG_PROBS, False)),
        lora=parse_lora(tensors),
    )


def parse_lora(tensors: Mapping[str, np.ndarray]) -> LoraRequest | None:
    """The LoRA tensors (lora_contract.py): none, a task id alone, or a task id with both
    arrays, as the executor takes them (`loraValidateRequestTensors`,
    cpp/tensorrt_llm/runtime/loraUtils.cpp: weights and config come together, with a task id)."""
    task = tensors.get(lc.LORA_TASK_ID.name)
    weights = tensors.get(lc.LORA_WEIGHTS.name)
    config = tensors.get(lc.LORA_CONFIG.name)
    if task is None and weights is None and config is None:
        return None
    if task is None:
        raise RequestError(lc.LORA_TASK_ID.name, "required with lora_weights and lora_config")
    if (weights is None) != (config is None):
        missing = lc.LORA_CONFIG.name if config is None else lc.LORA_WEIGHTS.name
        raise RequestError(missing, "lora_weights and lora_config must be sent together")
    task_id = int(_scalar(tensors, lc.LORA_TASK_ID, 0))  # type: ignore[call-overload]
    if weights is not None and config is not None:
        if weights.ndim != 3 or weights.shape[0] != 1:
            raise RequestError(
                lc.LORA_WEIGHTS.name, f"must be [1, rows, width], got {weights.shape}"
            )
        if config.ndim != 3 or config.shape[0] != 1 or config.shape[2] != 3:
            raise RequestError(lc.LORA_CONFIG.name, f"must be [1, rows, 3], got {config.shape}")
    return LoraRequest(task_id=task_id, weights=weights, config=config)
