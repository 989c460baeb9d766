"""Parse one request of the vLLM backend's contract (vllm_contract.py) into plain values.

Pure (numpy arrays by tensor name in, no Triton import), so it is tested without Triton. It
mirrors `GenerateRequest._get_input_tensors` of triton-inference-server/vllm_backend at 8de0c14
(`src/utils/request.py`):

- `text_input[0]`: the prompt, UTF-8 bytes → str (vLLM tokenizes it itself).
- `image`: one base64 text of an image *file* per element → its bytes. The backend decodes with
  `base64.b64decode(...)`, which silently drops characters outside the alphabet; here they are
  refused (`validate=True`): a façade sending a data: URL or broken base64 is caught.
- `stream` (default false) and `exclude_input_in_output`: present → the prompt is prepended
  when it is false; absent → prepended only when not streaming. Streaming with the prompt
  prepended is refused ("When streaming, `exclude_input_in_output` = False is not allowed.").
- `sampling_parameters[0]`: a JSON object of vLLM `SamplingParams` keywords
  (`TritonSamplingParams.from_dict`, src/utils/vllm_backend_utils.py). Only the keys of
  `vllm_contract.SAMPLING_KEYS` are accepted: this engine refuses a key it does not implement,
  naming it, where vLLM would apply it. Values are checked as `SamplingParams.__post_init__` /
  `_verify_args` do (vllm-project/vllm `vllm/sampling_params.py`), types strictly (JSON ints for
  ints, booleans for booleans: the backend's `int(v)` / `bool(v)` coercion would turn "false"
  into True). Absent keys take vLLM's defaults (`max_tokens` 16).
- `return_*`: each flag false unless present and true.

A bad tensor or key is a Refusal naming the tensor (refusal.py), answered INVALID_ARG; the
backend itself answers most of these with an INTERNAL "Error generating stream: …".
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.cpu_engine.sampling import SamplingConfig
from autoglm.triton_models.refusal import Refusal
from autoglm.triton_models.sampling_bounds import (
    GREEDY_TEMPERATURE_BELOW,
    MAX_ABS_PENALTY,
    MIN_REPETITION_PENALTY,
)

__all__ = ["DEFAULT_MAX_TOKENS", "MAX_LOGPROBS", "VlRequest", "parse_vl_request"]

# vLLM `SamplingParams.max_tokens` default (vllm/sampling_params.py).
DEFAULT_MAX_TOKENS = 16
# vLLM `ModelConfig.max_logprobs` default (vllm/config/model.py): more is refused ("Requested
# sample logprobs of N, which is greater than max of 20"), and so is -1 (the whole vocabulary).
MAX_LOGPROBS = 20
# vLLM raises a positive temperature below this to it: "temperature %s is less than %s, which
# may cause numerical errors nan or inf in tensors. We have maxed it out to %s." (`_MAX_TEMP`).
MIN_SAMPLED_TEMPERATURE = 1e-2
# TensorRT-LLM's and torch's seed range, which SamplingConfig keeps; vLLM reads -1 as "no seed".
_SEED_LIMIT = 2**64

_SAMPLING = vc.SAMPLING_PARAMETERS.name


@dataclass(frozen=True, slots=True)
class VlRequest:
    """One generation request on the vLLM contract, as plain values."""

    prompt: str
    images: tuple[bytes, ...]  # compressed image files, in placeholder order
    stream: bool
    # Prepend the prompt to the (non-streamed) text_output: exclude_input_in_output false.
    prepend_input: bool
    max_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    skip_special_tokens: bool = True
    # Log-probabilities asked for: None = off (vLLM computes none); 0 = the chosen token's.
    logprobs: int | None = None
    return_finish_reason: bool = False
    return_cumulative_logprob: bool = False
    return_logprobs: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False


def parse_vl_request(tensors: Mapping[str, np.ndarray]) -> VlRequest:
    """Validate the tensors of one request (no batch dimension: max_batch_size 0)."""
    prompt = _text_input(tensors)
    images = _images(tensors)
    stream = _flag(tensors, vc.STREAM)
    exclude = _optional_flag(tensors, vc.EXCLUDE_INPUT_IN_OUTPUT)
    prepend_input = (not exclude) if exclude is not None else not stream
    if stream and prepend_input:
        raise Refusal(
            vc.EXCLUDE_INPUT_IN_OUTPUT.name,
            "must not be false when streaming (the vLLM backend's rule)",
        )
    params = _sampling_object(tensors)
    return VlRequest(
        prompt=prompt,
        images=images,
        stream=stream,
        prepend_input=prepend_input,
        max_tokens=_max_tokens(params),
        sampling=_sampling_config(params),
        stop=_stop(params),
        stop_token_ids=_stop_token_ids(params),
        skip_special_tokens=_bool_key(params, "skip_special_tokens", default=True),
        logprobs=_logprobs(params),
        return_finish_reason=_flag(tensors, vc.RETURN_FINISH_REASON),
        return_cumulative_logprob=_flag(tensors, vc.RETURN_CUMULATIVE_LOGPROB),
        return_logprobs=_flag(tensors, vc.RETURN_LOGPROBS),
        return_num_input_tokens=_flag(tensors, vc.RETURN_NUM_INPUT_TOKENS),
        return_num_output_tokens=_flag(tensors, vc.RETURN_NUM_OUTPUT_TOKENS),
    )


# --- tensors ---------------------------------------------------------------------------------


def _one(tensors: Mapping[str, np.ndarray], spec: vc.TensorSpec) -> object | None:
    """The single element of a dims-[1] tensor, None when absent (Triton checks the dims; this
    catches a caller of the pure function, and keeps `[0]` from hiding extra elements)."""
    arr = tensors.get(spec.name)
    if arr is None:
        if not spec.optional:
            raise Refusal(spec.name, "required, missing")
        return None
    if arr.size != 1:
        raise Refusal(spec.name, f"must hold one element, got shape {arr.shape}")
    return arr.reshape(-1)[0]


def _optional_flag(tensors: Mapping[str, np.ndarray], spec: vc.TensorSpec) -> bool | None:
    value = _one(tensors, spec)
    if value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise Refusal(spec.name, f"must be BOOL, got {type(value).__name__}")
    return bool(value)


def _flag(tensors: Mapping[str, np.ndarray], spec: vc.TensorSpec) -> bool:
    return bool(_optional_flag(tensors, spec))


def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # a numpy str array from a caller of the pure function
        return value.encode()
    raise Refusal(name, f"must be BYTES, got {type(value).__name__}")


def _text_input(tensors: Mapping[str, np.ndarray]) -> str:
    raw = _as_bytes(_one(tensors, vc.TEXT_INPUT), vc.TEXT_INPUT.name)
    try:
        prompt = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refusal(
            vc.TEXT_INPUT.name, f"is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    if not prompt:
        # vLLM: "The decoder prompt cannot be empty" (v1 processor's input validation).
        raise Refusal(vc.TEXT_INPUT.name, "the prompt is empty")
    return prompt


def _images(tensors: Mapping[str, np.ndarray]) -> tuple[bytes, ...]:
    arr = tensors.get(vc.IMAGE.name)
    if arr is None:
        return ()
    if arr.ndim != 1:
        raise Refusal(vc.IMAGE.name, f"must be one-dimensional [images], got shape {arr.shape}")
    images = []
    for i, element in enumerate(arr):
        text = _as_bytes(element, vc.IMAGE.name)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Refusal(vc.IMAGE.name, f"element {i} is not base64 ({exc})") from None
        if not data:
            raise Refusal(vc.IMAGE.name, f"element {i} is empty")
        images.append(data)
    return tuple(images)


# --- sampling_parameters ---------------------------------------------------------------------


def _refuse(key: str, reason: str) -> Refusal:
    return Refusal(_SAMPLING, f"{key}: {reason}")


def _sampling_object(tensors: Mapping[str, np.ndarray]) -> dict[str, object]:
    value = _one(tensors, vc.SAMPLING_PARAMETERS)
    if value is None:
        # The backend then reads the request's parameters instead; the façade always sends
        # the tensor, and Triton's own request parameters are not tensors.
        return {}
    raw = _as_bytes(value, _SAMPLING)
    try:
        params = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refusal(_SAMPLING, f"is not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise Refusal(_SAMPLING, f"must be a JSON object, got {type(params).__name__}")
    unknown = sorted(set(params) - vc.SAMPLING_KEYS)
    if unknown:
        raise _refuse(
            unknown[0],
            "not implemented by this engine (it takes " + ", ".join(sorted(vc.SAMPLING_KEYS)) + ")",
        )
    return params


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _is_int(value: object) -> bool:
    # bool is an int subclass; true as a max_tokens is a caller bug, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _number(params: Mapping[str, object], key: str, default: float) -> float:
    value = params.get(key)
    if value is None:  # absent or null: vLLM's default (`SamplingParams.from_optional`)
        return default
    if not (_is_int(value) or isinstance(value, float)):
        raise _refuse(key, f"must be a number, got {type(value).__name__}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise _refuse(key, f"must be a finite number, got {number}")
    return number


def _int(params: Mapping[str, object], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if not _is_int(value):
        raise _refuse(key, f"must be an integer, got {type(value).__name__} {value!r}")
    return value  # type: ignore[return-value]


def _bool_key(params: Mapping[str, object], key: str, *, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise _refuse(key, f"must be true or false, got {value!r}")
    return value


def _max_tokens(params: Mapping[str, object]) -> int:
    if "max_tokens" in params and params["max_tokens"] is None:
        # vLLM: null = up to the model's context length. The façade always sends a bound.
        raise _refuse("max_tokens", "null (up to the context length) is not implemented")
    value = _int(params, "max_tokens")
    max_tokens = DEFAULT_MAX_TOKENS if value is None else value
    if max_tokens < 1:
        raise _refuse("max_tokens", f"must be at least 1, got {max_tokens}")
    return max_tokens


def _sampling_config(params: Mapping[str, object]) -> SamplingConfig:
    """vLLM's checks (`_verify_args`) and rewrites (`__post_init__`), as a SamplingConfig."""
    temperature = _number(params, "temperature", 1.0)
    if temperature < 0:
        raise _refuse("temperature", f"must be non-negative, got {temperature}")
    top_p = _number(params, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise _refuse("top_p", f"must be in (0, 1], got {top_p}")
    top_k = _int(params, "top_k") or 0
    if top_k < -1:
        raise _refuse("top_k", f"must be 0 (disable), or at least 1, got {top_k}")
    top_k = max(top_k, 0)  # "quietly accept -1 as disabled, but prefer 0"
    repetition = _number(params, "repetition_penalty", 1.0)
    # vLLM refuses <= 0; the CPU engine divides by it, so it keeps the façade's floor
    # (sampling_bounds.py), which is where vLLM floors a temperature for the same reason.
    if repetition < MIN_REPETITION_PENALTY:
        raise _refuse(
            "repetition_penalty", f"must be at least {MIN_REPETITION_PENALTY}, got {repetition}"
        )
    penalties = {}
    for key in ("frequency_penalty", "presence_penalty"):
        value = _number(params, key, 0.0)
        if not -MAX_ABS_PENALTY <= value <= MAX_ABS_PENALTY:
            raise _refuse(key, f"must be in [-2, 2], got {value}")
        penalties[key] = value
    seed = _int(params, "seed")
    if seed == -1:  # vLLM: "if self.seed == -1: self.seed = None"
        seed = None
    if seed is not None and not 0 <= seed < _SEED_LIMIT:
        raise _refuse("seed", f"must be -1 (none) or in [0, 2**64), got {seed}")
    if temperature < GREEDY_TEMPERATURE_BELOW:
        # "Zero temperature means greedy sampling": vLLM resets top_p and top_k.
        temperature, top_p, top_k = 0.0, 1.0, 0
    elif temperature < MIN_SAMPLED_TEMPERATURE:
        temperature = MIN_SAMPLED_TEMPERATURE
    config = SamplingConfig(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition,
        seed=seed,
        frequency_penalty=penalties["frequency_penalty"],
        presence_penalty=penalties["presence_penalty"],
    )
    config.validate()  # cannot fail after the checks above; a backstop if they drift
    return config


def _stop(params: Mapping[str, object]) -> tuple[str, ...]:
    value = params.get("stop")
    if value is None:
        return ()
    words = [value] if isinstance(value, str) else value
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise _refuse("stop", "must be a string or a list of strings")
    if any(not w for w in words):
        raise _refuse("stop", "cannot contain an empty string")
    return tuple(words)


def _stop_token_ids(params: Mapping[str, object]) -> tuple[int, ...]:
    value = params.get("stop_token_ids")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(_is_int(t) for t in value):
        raise _refuse("stop_token_ids", f"must contain only integers, got {value!r}")
    if any(t < 0 for t in value):
        raise _refuse("stop_token_ids", f"must be token ids (>= 0), got {value!r}")
    return tuple(dict.fromkeys(value))  # vLLM drops repeats, keeping the order


def _logprobs(params: Mapping[str, object]) -> int | None:
    value = params.get("logprobs")
    if isinstance(value, bool):
        # vLLM reads true as 1 ("if self.logprobs is True: self.logprobs = 1").
        raise _refuse("logprobs", f"must be an integer or null, got {value}")
    count = _int(params, "logprobs")
    if count is not None and not 0 <= count <= MAX_LOGPROBS:
        raise _refuse(
            "logprobs", f"must be in [0, {MAX_LOGPROBS}] (vLLM's max_logprobs), got {count}"
        )
    if count:
        # vLLM adds the `count` most likely tokens to each entry; this engine computes the
        # chosen token's log-probability only (runner.py), so it refuses rather than differ.
        raise _refuse("logprobs", f"only 0 (the chosen token alone) is implemented, got {count}")
    return count
