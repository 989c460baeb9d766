"""What the python-backend engine models (cpu_reference, synthetic, cpu_vl) do with Triton's
objects.

Imported only inside a Triton python-backend stub, where `triton_python_backend_utils` exists:
reading a config parameter, taking a request's contract inputs inside `execute` (the request
object must not reach a worker thread: model.py of cpu_reference explains the segfault), and
building the `output_ids` (and `output_log_probs`) / error responses: a refusal (the caller's
bad tensor, refusal.py) is Triton's INVALID_ARG, anything else INTERNAL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from autoglm.triton_models import contract
from autoglm.triton_models.refusal import Refusal


def param(config: dict[str, Any], key: str) -> str:
    """A `parameters { key: … string_value: … }` of config.pbtxt; a clear error if missing."""
    try:
        return config["parameters"][key]["string_value"]
    except KeyError:
        raise pb_utils.TritonModelException(f"config.pbtxt misses parameter '{key}'") from None


def take_inputs(
    request: Any, specs: Sequence[contract.TensorSpec] = contract.INPUTS
) -> dict[str, np.ndarray]:
    """The input tensors `specs` (default: the TensorRT-LLM contract's) of `request`, copied
    (they outlive the request)."""
    tensors = {}
    for spec in specs:
        t = pb_utils.get_input_tensor_by_name(request, spec.name)
        if t is not None:
            tensors[spec.name] = t.as_numpy().copy()
    return tensors


def ids_response(ids: list[int], log_probs: list[float] | None = None) -> Any:
    """One response carrying `ids` as output_ids [batch 1, beam 1, tokens] + sequence_length,
    and `log_probs` (when given) as output_log_probs [batch 1, beam 1, steps]: TensorRT-LLM sends
    every log-probability generated so far there, also when `ids` are only the new tokens
    (contract.OUTPUT_LOG_PROBS)."""
    output_ids = np.asarray(ids, dtype=np.int32).reshape(1, 1, -1)
    lengths = np.asarray([[len(ids)]], dtype=np.int32)  # [batch, beam]
    tensors = [
        pb_utils.Tensor(contract.OUTPUT_IDS.name, output_ids),
        pb_utils.Tensor(contract.SEQUENCE_LENGTH.name, lengths),
    ]
    if log_probs is not None:
        values = np.asarray(log_probs, dtype=np.float32).reshape(1, 1, -1)
        tensors.append(pb_utils.Tensor(contract.OUTPUT_LOG_PROBS.name, values))
    return pb_utils.InferenceResponse(output_tensors=tensors)


def error_response(message: str) -> Any:
    """The engine failed (INTERNAL): not the caller's fault."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def refusal_response(refusal: Refusal) -> Any:
    """The request is refused (INVALID_ARG); the message names the tensor (refusal.py)."""
    error = pb_utils.TritonError(str(refusal), pb_utils.TritonError.INVALID_ARG)
    return pb_utils.InferenceResponse(error=error)
