"""Requests and responses of the second engine contract: Triton's vLLM backend (text in, text out).

Pure: builds the ModelInferRequest bytes and reads one streamed response. The tensors, their
meaning and their source are in `triton_models/vllm_contract.py`. The façade still owns
validation, limits, stop handling, usage, audit and tracing; on this contract the engine
tokenizes and detokenizes, so the pipeline gets text and token counts instead of ids.

Sampling goes as vLLM `SamplingParams` keywords in `sampling_parameters` (JSON). A neutral value
is left out, so the engine's own default applies (the same value): a request without penalties is
the same bytes whatever vLLM's default spelling of "off" is (top_k 0 or -1, for one).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tritonclient.grpc import service_pb2

from autoglm.server.engine.stream_errors import stream_error
from autoglm.server.errors import EngineFailure
from autoglm.triton_models import contract
from autoglm.triton_models import vllm_contract as vc

if TYPE_CHECKING:  # client.py imports this module
    from autoglm.server.engine.client import EngineSampling

_FINAL = "triton_final_response"


@dataclass(frozen=True, slots=True)
class TextEngineRequest:
    triton_model: str
    request_id: str
    prompt: str  # the rendered prompt, one image placeholder per image
    images: Sequence[bytes]  # compressed image files, in placeholder order
    max_new_tokens: int
    sampling: EngineSampling
    stop: Sequence[str] = ()
    skip_special_tokens: bool = True
    model_version: str = ""  # "" = Triton's version policy; a canary routes explicitly (canary.py)


@dataclass(slots=True)
class TextStep:
    """One streamed response: its new text and tokens; the counts the engine reports."""

    text: str
    new_tokens: int
    input_tokens: int | None  # num_input_tokens (image tokens included), when sent
    finish_reason: str | None  # vllm_contract.FINISH_*; None until the last response
    logprobs: list[float] | None  # the chosen tokens' log-probabilities, when asked
    final: bool


def sampling_parameters(r: TextEngineRequest) -> dict[str, object]:
    """The vLLM SamplingParams keywords of a request (vllm_contract.SAMPLING_KEYS)."""
    s = r.sampling
    params: dict[str, object] = {"max_tokens": r.max_new_tokens, "seed": s.seed}
    if s.runtime_top_k == 1:
        # Greedy (plan.engine_sampling maps it to top_k 1): vLLM's own way is temperature 0.
        params["temperature"] = 0.0
    else:
        params["temperature"] = s.temperature
        if s.runtime_top_k:
            params["top_k"] = s.runtime_top_k
        if s.runtime_top_p < 1.0:
            params["top_p"] = s.runtime_top_p
    if s.repetition_penalty != 1.0:
        params["repetition_penalty"] = s.repetition_penalty
    if s.frequency_penalty:
        params["frequency_penalty"] = s.frequency_penalty
    if s.presence_penalty:
        params["presence_penalty"] = s.presence_penalty
    if r.stop:
        params["stop"] = list(r.stop)
    if not r.skip_special_tokens:
        params["skip_special_tokens"] = False
    if s.return_log_probs:
        params["logprobs"] = 0  # the chosen token's only (vLLM: 0 = no alternatives)
    assert params.keys() <= vc.SAMPLING_KEYS, params.keys() - vc.SAMPLING_KEYS
    return params


def _bytes_tensor(
    req: service_pb2.ModelInferRequest, spec: contract.TensorSpec, items: Sequence[bytes]
) -> None:
    """A BYTES tensor of `items`: raw contents are each item with its 4-byte little-endian
    length (Triton's serialization of BYTES elements, as tritonclient's serialize_byte_tensor)."""
    tensor = req.inputs.add()
    tensor.name = spec.name
    tensor.datatype = spec.wire_dtype
    tensor.shape.append(len(items))  # max_batch_size 0: the dims are the whole shape
    req.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in items))


def _bool_tensor(
    req: service_pb2.ModelInferRequest, spec: contract.TensorSpec, value: bool
) -> None:
    tensor = req.inputs.add()
    tensor.name = spec.name
    tensor.datatype = spec.wire_dtype
    tensor.shape.append(1)
    req.raw_input_contents.append(struct.pack("<?", value))


def build_text_infer_request(r: TextEngineRequest) -> service_pb2.ModelInferRequest:
    """The ModelInferRequest of one streamed generation on the vLLM contract."""
    req = service_pb2.ModelInferRequest(
        model_name=r.triton_model, model_version=r.model_version, id=r.request_id
    )
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    _bytes_tensor(req, vc.TEXT_INPUT, [r.prompt.encode()])
    if r.images:
        _bytes_tensor(req, vc.IMAGE, [base64.b64encode(image) for image in r.images])
    _bool_tensor(req, vc.STREAM, True)
    _bool_tensor(req, vc.EXCLUDE_INPUT_IN_OUTPUT, True)
    params = json.dumps(sampling_parameters(r), separators=(",", ":")).encode()
    _bytes_tensor(req, vc.SAMPLING_PARAMETERS, [params])
    for spec in (vc.RETURN_FINISH_REASON, vc.RETURN_NUM_INPUT_TOKENS, vc.RETURN_NUM_OUTPUT_TOKENS):
        _bool_tensor(req, spec, True)
    if r.sampling.return_log_probs:
        _bool_tensor(req, vc.RETURN_LOGPROBS, True)
    return req


def _first_bytes(raw: bytes, name: str) -> bytes:
    """The first element of a BYTES tensor's raw contents."""
    if len(raw) < 4:
        raise EngineFailure(f"engine response: {name} is empty")
    (size,) = struct.unpack_from("<I", raw)
    if 4 + size > len(raw):
        raise EngineFailure(f"engine response: {name} is truncated")
    return raw[4 : 4 + size]


def _chosen_logprobs(raw: bytes) -> list[float]:
    """The chosen tokens' log-probabilities from the backend's `logprobs` JSON: one entry per new
    token, each `{token_id: {"logprob", "rank", "decoded_token"}}`; with `logprobs: 0` vLLM
    lists the chosen token only."""
    try:
        steps = json.loads(raw)
        return [float(next(iter(step.values()))["logprob"]) for step in steps or []]
    except (ValueError, TypeError, KeyError, StopIteration) as exc:
        raise EngineFailure(f"engine response: unreadable logprobs ({exc})") from None


def parse_text_response(resp: service_pb2.ModelStreamInferResponse) -> TextStep:
    """One streamed response of the vLLM contract; EngineFailure on an error."""
    if resp.error_message:
        raise stream_error(resp.error_message)
    infer = resp.infer_response
    final = infer.parameters[_FINAL].bool_param if _FINAL in infer.parameters else False
    step = TextStep("", 0, None, None, None, final)
    for i, out in enumerate(infer.outputs):
        raw = infer.raw_output_contents[i] if i < len(infer.raw_output_contents) else b""
        name = out.name
        if name == vc.TEXT_OUTPUT.name:
            try:
                step.text = _first_bytes(raw, name).decode()
            except UnicodeDecodeError:
                raise EngineFailure("engine response: text_output is not UTF-8") from None
        elif name == vc.NUM_OUTPUT_TOKENS.name and len(raw) >= 4:
            step.new_tokens = struct.unpack_from("<I", raw)[0]
        elif name == vc.NUM_INPUT_TOKENS.name and len(raw) >= 4:
            step.input_tokens = struct.unpack_from("<I", raw)[0]
        elif name == vc.FINISH_REASON.name:
            reason = _first_bytes(raw, name).decode(errors="replace")
            step.finish_reason = None if reason == vc.FINISH_NONE else reason
        elif name == vc.LOGPROBS.name:
            step.logprobs = _chosen_logprobs(_first_bytes(raw, name))
    return step
