"""The engine tensor contract: the TensorRT-LLM backend's tensors that the façade uses.

One module, imported by both sides: the façade (which builds requests and reads responses) and
the CPU reference engine (which implements the same tensors), so the façade cannot tell a
`tensorrtllm` engine from the CPU reference one.

Source of the names, dtypes and dims: TensorRT-LLM 1.2.1,
`triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt` (the last release that
serves TensorRT engines through Triton's `tensorrtllm` backend). Dims exclude the batch dimension
(`max_batch_size > 0`), so on the wire every tensor has a leading batch dim of 1 per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    data_type: str  # Triton ModelConfig DataType name, e.g. "TYPE_INT32"
    dims: tuple[int, ...]  # without the batch dim
    optional: bool = False

    @property
    def wire_dtype(self) -> str:
        """Datatype string used by the KServe v2 / Triton gRPC protocol ("INT32", "BOOL", …)."""
        return self.data_type.removeprefix("TYPE_").replace("STRING", "BYTES")

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_NUMPY[self.data_type])


_NUMPY = {
    "TYPE_INT32": np.int32,
    "TYPE_UINT64": np.uint64,
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,  # lora_contract.py's lora_weights
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT32": np.uint32,  # vllm_contract.py's token counts
    "TYPE_STRING": np.object_,  # vllm_contract.py's BYTES tensors (Python bytes objects)
}

# Request tensors, in the order the façade sends them.
INPUT_IDS = TensorSpec("input_ids", "TYPE_INT32", (-1,), optional=True)  # [batch, tokens]
INPUT_LENGTHS = TensorSpec("input_lengths", "TYPE_INT32", (1,))  # [batch, 1]
REQUEST_OUTPUT_LEN = TensorSpec("request_output_len", "TYPE_INT32", (1,))  # [batch, 1]
# One end-of-sequence id per request (dims [1], an INT32 scalar after the batch dim); the engine
# leaves it out of `output_ids`. A model with several (Llama-3.1-Instruct: 128001, 128008, 128009)
# sends its others as single-token words of STOP_WORDS_LIST, as TensorRT-LLM's own LLM API sends
# `stop_token_ids` (`SamplingParams._get_stop_words`, tensorrt_llm/sampling_params.py); a matched
# stop word stays in `output_ids` (its LLM API trims it afterwards, `_handle_sequence`,
# tensorrt_llm/executor/result.py), so the façade cuts it (server/models.py `end_at`).
END_ID = TensorSpec("end_id", "TYPE_INT32", (1,), optional=True)
PAD_ID = TensorSpec("pad_id", "TYPE_INT32", (1,), optional=True)
STREAMING = TensorSpec("streaming", "TYPE_BOOL", (1,), optional=True)
EXCLUDE_INPUT_IN_OUTPUT = TensorSpec("exclude_input_in_output", "TYPE_BOOL", (1,), optional=True)
TEMPERATURE = TensorSpec("temperature", "TYPE_FP32", (1,), optional=True)
RUNTIME_TOP_K = TensorSpec("runtime_top_k", "TYPE_INT32", (1,), optional=True)
RUNTIME_TOP_P = TensorSpec("runtime_top_p", "TYPE_FP32", (1,), optional=True)
SEED = TensorSpec("seed", "TYPE_UINT64", (1,), optional=True)  # there is no `random_seed` in 1.2
REPETITION_PENALTY = TensorSpec("repetition_penalty", "TYPE_FP32", (1,), optional=True)
# [batch, 2, n]: row 0 the flattened token ids of all stop words, row 1 their end offsets
# into row 0, padded with -1 (TensorRT-LLM's `to_word_list_format`).
STOP_WORDS_LIST = TensorSpec("stop_words_list", "TYPE_INT32", (2, -1), optional=True)
# Additive penalties (TensorRT-LLM `presencePenalty` / `frequencyPenalty`; the semantics the CPU
# engine copies are in cpu_engine/sampling.py). Input and output of the real file checked at
# NVIDIA/TensorRT-LLM commit 0c8de69a1ca6213eebb20a51873890ff128666c2 (1.2.0rc8), same path.
FREQUENCY_PENALTY = TensorSpec("frequency_penalty", "TYPE_FP32", (1,), optional=True)
PRESENCE_PENALTY = TensorSpec("presence_penalty", "TYPE_FP32", (1,), optional=True)
# Ask for `output_log_probs` in the responses.
RETURN_LOG_PROBS = TensorSpec("return_log_probs", "TYPE_BOOL", (1,), optional=True)

INPUTS: tuple[TensorSpec, ...] = (
    INPUT_IDS,
    INPUT_LENGTHS,
    REQUEST_OUTPUT_LEN,
    END_ID,
    PAD_ID,
    STREAMING,
    EXCLUDE_INPUT_IN_OUTPUT,
    TEMPERATURE,
    RUNTIME_TOP_K,
    RUNTIME_TOP_P,
    SEED,
    REPETITION_PENALTY,
    STOP_WORDS_LIST,
    FREQUENCY_PENALTY,
    PRESENCE_PENALTY,
    RETURN_LOG_PROBS,
)

# Response tensors.
OUTPUT_IDS = TensorSpec("output_ids", "TYPE_INT32", (-1, -1))  # [batch, beam, tokens]
SEQUENCE_LENGTH = TensorSpec("sequence_length", "TYPE_INT32", (-1,))  # [batch, beam]
# [batch, beam, steps], only when `return_log_probs` is set: the log-probability of each
# generated token. In a streamed response TensorRT-LLM sends every value generated so far, not
# only those of the response's new ids: its executor puts the request's whole log-prob list into
# each result while `output_ids` carries only the unsent tokens (`LlmRequest::createResult`,
# cpp/tensorrt_llm/batch_manager/llmRequest.cpp; the LLM API accumulates the "streamwise
# monotonically growing list" accordingly, NVIDIA/TensorRT-LLM PR #7580). The CPU reference
# engine sends the same; a reader takes the values of its new ids by position (`new_log_probs`).
OUTPUT_LOG_PROBS = TensorSpec("output_log_probs", "TYPE_FP32", (-1, -1))

OUTPUTS: tuple[TensorSpec, ...] = (OUTPUT_IDS, SEQUENCE_LENGTH, OUTPUT_LOG_PROBS)

INPUTS_BY_NAME = {t.name: t for t in INPUTS}
OUTPUTS_BY_NAME = {t.name: t for t in OUTPUTS}


def to_stop_words_list(words: list[list[int]]) -> np.ndarray:
    """Encode stop words (each a token-id sequence) as TensorRT-LLM's [2, n] word list.

    Mirrors `to_word_list_format` in TensorRT-LLM's preprocessing model: row 0 concatenates the
    ids, row 1 holds the cumulative end offset of each word, both padded with -1 to equal length.
    """
    flat: list[int] = []
    offsets: list[int] = []
    for word in words:
        if not word:
            continue
        flat.extend(word)
        offsets.append(len(flat))
    width = max(len(flat), len(offsets), 1)
    out = np.full((2, width), -1, dtype=np.int32)
    out[0, : len(flat)] = flat
    out[1, : len(offsets)] = offsets
    return out


def from_stop_words_list(arr: np.ndarray) -> list[list[int]]:
    """Decode a [2, n] word list back into token-id sequences (inverse of to_stop_words_list)."""
    ids, offsets = arr[0], arr[1]
    words: list[list[int]] = []
    start = 0
    for end in offsets:
        if end < 0:
            break
        words.append([int(t) for t in ids[start:end]])
        start = int(end)
    return words


def new_log_probs(values: Sequence[float], count: int, seen: int) -> list[float]:
    """The log-probabilities of a response's `count` new ids, `seen` ids having come before.

    `values` is the response's `output_log_probs` (beam 0). An engine that sends the values of
    the new ids only (`len(values) == count`) and one that sends the whole list so far, as
    TensorRT-LLM does (see OUTPUT_LOG_PROBS), are both read right; ValueError when `values`
    cannot hold the new ids' values.
    """
    if len(values) == count or count == 0:
        return list(values[:count])
    if len(values) < seen + count:
        raise ValueError(f"output_log_probs: {len(values)} values for {count} new ids after {seen}")
    return list(values[seen : seen + count])


def declared_mismatches(
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    *,
    sent: Sequence[TensorSpec],
    read: Sequence[TensorSpec],
) -> list[str]:
    """How a served model's declared tensors (name → ModelConfig data type name, e.g.
    "TYPE_INT32") differ from a contract: every tensor the façade may send must be an input of
    that type, every tensor it reads an output of that type ([] when they match). Used at the
    façade's start on what Triton reports for each model (its ModelConfig), so a model served
    under the wrong engine kind is refused by name instead of failing every request."""
    problems: list[str] = []
    for kind, declared, specs in (("input", inputs, sent), ("output", outputs, read)):
        for spec in specs:
            found = declared.get(spec.name)
            if found is None:
                problems.append(f"no {kind} {spec.name!r}")
            elif found != spec.data_type:
                problems.append(f"{kind} {spec.name!r} is {found}, not {spec.data_type}")
    return problems
