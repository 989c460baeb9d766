"""parse_vl_request: the CPU engine for vision-language models reads the vLLM backend's tensors
as that backend does (vllm_backend 8de0c14, src/utils/request.py), and refuses — naming the
tensor, and the key inside sampling_parameters — whatever it cannot serve."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor

from autoglm.server.engine.client import EngineSampling
from autoglm.server.engine.text_request import TextEngineRequest, build_text_infer_request
from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.cpu_engine.sampling import SamplingConfig
from autoglm.triton_models.cpu_vl.request import (
    DEFAULT_MAX_TOKENS,
    MAX_LOGPROBS,
    VlRequest,
    parse_vl_request,
)
from autoglm.triton_models.refusal import Refusal, parse_refusal

PROMPT = "<|user|>\n<|begin_of_image|><|image|><|end_of_image|>What is on the screen?"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # bytes only: decoding images is the runner's


def text(value: str | bytes) -> np.ndarray:
    """A BYTES tensor of one element, as the python backend hands it over ([1], object)."""
    return np.array([value.encode() if isinstance(value, str) else value], dtype=np.object_)


def flag(value: bool) -> np.ndarray:
    return np.array([value], dtype=np.bool_)


def params(**values: Any) -> np.ndarray:
    return text(json.dumps(values))


def request(**tensors: np.ndarray) -> dict[str, np.ndarray]:
    return {"text_input": text(PROMPT), **tensors}


def refused(tensors: dict[str, np.ndarray]) -> Refusal:
    with pytest.raises(Refusal) as info:
        parse_vl_request(tensors)
    # The message alone carries the tensor, as it reaches the façade (refusal.py).
    back = parse_refusal(f"in ensemble: {info.value}")
    assert back is not None
    assert (back.tensor, back.reason) == (info.value.tensor, info.value.reason)
    return info.value


# --- what a request becomes ------------------------------------------------------------------


def test_minimal_request_takes_the_backend_defaults() -> None:
    req = parse_vl_request(request())
    assert req == VlRequest(
        prompt=PROMPT,
        images=(),
        stream=False,
        prepend_input=True,  # not streaming, exclude_input_in_output absent: prepend
        max_tokens=DEFAULT_MAX_TOKENS,
        sampling=SamplingConfig(),
    )


def test_the_facade_request_shape() -> None:
    # What server/engine/text_request.py sends: streaming, input excluded, every counter asked.
    req = parse_vl_request(
        request(
            image=np.array([base64.b64encode(PNG), base64.b64encode(PNG[::-1])], dtype=np.object_),
            stream=flag(True),
            exclude_input_in_output=flag(True),
            sampling_parameters=params(
                max_tokens=64,
                seed=7,
                temperature=0.7,
                top_k=40,
                top_p=0.9,
                repetition_penalty=1.1,
                frequency_penalty=0.5,
                presence_penalty=-1.5,
                stop=["</answer>", "\n\n"],
                stop_token_ids=[151336, 151329, 151336],
                skip_special_tokens=False,
                logprobs=0,
            ),
            return_finish_reason=flag(True),
            return_num_input_tokens=flag(True),
            return_num_output_tokens=flag(True),
            return_logprobs=flag(True),
            return_cumulative_logprob=flag(False),
        )
    )
    assert req.images == (PNG, PNG[::-1])
    assert (req.stream, req.prepend_input) == (True, False)
    assert req.max_tokens == 64
    assert req.sampling == SamplingConfig(
        temperature=0.7,
        top_k=40,
        top_p=0.9,
        repetition_penalty=1.1,
        seed=7,
        frequency_penalty=0.5,
        presence_penalty=-1.5,
    )
    assert req.stop == ("</answer>", "\n\n")
    assert req.stop_token_ids == (151336, 151329)  # repeats dropped, order kept (vLLM)
    assert req.skip_special_tokens is False
    assert req.logprobs == 0
    assert (
        req.return_finish_reason,
        req.return_num_input_tokens,
        req.return_num_output_tokens,
        req.return_logprobs,
        req.return_cumulative_logprob,
    ) == (True, True, True, True, False)


@pytest.mark.parametrize(
    ("stream", "exclude", "prepend"),
    [
        (None, None, True),  # the backend: absent and not streaming → prepend
        (False, None, True),
        (False, True, False),
        (False, False, True),
        (True, None, False),  # absent and streaming → no prepend
        (True, True, False),
    ],
)
def test_prepend_input_as_the_backend(
    stream: bool | None, exclude: bool | None, prepend: bool
) -> None:
    tensors = request()
    if stream is not None:
        tensors["stream"] = flag(stream)
    if exclude is not None:
        tensors["exclude_input_in_output"] = flag(exclude)
    req = parse_vl_request(tensors)
    assert (req.stream, req.prepend_input) == (bool(stream), prepend)


def test_streaming_with_the_prompt_prepended_is_refused() -> None:
    err = refused(request(stream=flag(True), exclude_input_in_output=flag(False)))
    assert err.tensor == "exclude_input_in_output"


def test_empty_image_tensor_means_text_only() -> None:
    assert parse_vl_request(request(image=np.array([], dtype=np.object_))).images == ()


def test_sampling_parameters_absent_or_empty_object() -> None:
    assert parse_vl_request(request()) == parse_vl_request(request(sampling_parameters=params()))


@pytest.mark.parametrize("temperature", [0, 0.0, 1e-6, 9.99e-6])
def test_temperature_below_vllm_eps_is_greedy(temperature: float) -> None:
    # vLLM: temperature < _SAMPLING_EPS (1e-5) is greedy; top_p and top_k are reset.
    req = parse_vl_request(
        request(sampling_parameters=params(temperature=temperature, top_p=0.5, top_k=3))
    )
    assert req.sampling == SamplingConfig(temperature=0.0, top_k=0, top_p=1.0)
    assert req.sampling.is_greedy


def test_small_temperature_is_raised_to_vllm_floor() -> None:
    # vLLM: "temperature … is less than 0.01 … We have maxed it out to 0.01."
    req = parse_vl_request(request(sampling_parameters=params(temperature=0.005)))
    assert req.sampling.temperature == 0.01
    assert not req.sampling.is_greedy


def test_vllm_spellings_of_off() -> None:
    req = parse_vl_request(request(sampling_parameters=params(top_k=-1, seed=-1, stop=None)))
    assert (req.sampling.top_k, req.sampling.seed, req.stop) == (0, None, ())
    nulls = params(temperature=None, top_p=None, repetition_penalty=None, logprobs=None)
    assert parse_vl_request(request(sampling_parameters=nulls)).sampling == SamplingConfig()


def test_single_stop_string() -> None:
    req = parse_vl_request(request(sampling_parameters=params(stop="</answer>")))
    assert req.stop == ("</answer>",)


def test_numbers_accept_json_ints_for_floats() -> None:
    req = parse_vl_request(request(sampling_parameters=params(temperature=1, top_p=1)))
    assert (req.sampling.temperature, req.sampling.top_p) == (1.0, 1.0)


def test_largest_seed() -> None:
    req = parse_vl_request(request(sampling_parameters=params(seed=2**64 - 1)))
    assert req.sampling.seed == 2**64 - 1


# --- refusals: each names its tensor ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "tensor", "match"),
    [
        ({"text_input": None}, "text_input", "required"),
        ({"text_input": text(b"\xff\xfe")}, "text_input", "UTF-8"),
        ({"text_input": text("")}, "text_input", "empty"),
        ({"text_input": np.array([b"a", b"b"], dtype=np.object_)}, "text_input", "one element"),
        ({"text_input": np.array([1], dtype=np.int32)}, "text_input", "BYTES"),
        ({"image": np.array([b"not base64!"], dtype=np.object_)}, "image", "element 0"),
        (
            {"image": np.array([b"data:image/png;base64," + base64.b64encode(PNG)], dtype=object)},
            "image",
            "base64",
        ),
        (
            {"image": np.array([base64.b64encode(PNG), b"=="], dtype=np.object_)},
            "image",
            "element 1",
        ),
        ({"image": np.array([b""], dtype=np.object_)}, "image", "empty"),
        ({"image": np.array([[base64.b64encode(PNG)]], dtype=np.object_)}, "image", "shape"),
        ({"image": np.array([3], dtype=np.int64)}, "image", "BYTES"),
        ({"stream": np.array([1], dtype=np.int32)}, "stream", "BOOL"),
        ({"stream": np.array([True, False])}, "stream", "one element"),
        ({"return_logprobs": np.array([1.0], dtype=np.float32)}, "return_logprobs", "BOOL"),
        ({"sampling_parameters": text("{max_tokens: 3}")}, "sampling_parameters", "valid JSON"),
        ({"sampling_parameters": text("[1, 2]")}, "sampling_parameters", "JSON object"),
        ({"sampling_parameters": text(b"\xff")}, "sampling_parameters", "valid JSON"),
        ({"sampling_parameters": text('{"temperature": NaN}')}, "sampling_parameters", "NaN"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_tensors_name_the_tensor(
    tensors: dict[str, np.ndarray | None], tensor: str, match: str
) -> None:
    merged = {k: v for k, v in {**request(), **tensors}.items() if v is not None}
    err = refused(merged)
    assert err.tensor == tensor
    assert match in err.reason


@pytest.mark.parametrize(
    ("values", "key", "match"),
    [
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"max_tokens": -5}, "max_tokens", "at least 1"),
        ({"max_tokens": 1.5}, "max_tokens", "integer"),
        ({"max_tokens": "16"}, "max_tokens", "integer"),
        ({"max_tokens": True}, "max_tokens", "integer"),
        ({"max_tokens": None}, "max_tokens", "not implemented"),
        ({"temperature": -0.1}, "temperature", "non-negative"),
        ({"temperature": "0.5"}, "temperature", "number"),
        ({"top_p": 0}, "top_p", "(0, 1]"),
        ({"top_p": 1.01}, "top_p", "(0, 1]"),
        ({"top_p": -1}, "top_p", "(0, 1]"),
        ({"top_k": -2}, "top_k", "0 (disable)"),
        ({"top_k": 2.0}, "top_k", "integer"),
        ({"seed": -2}, "seed", "2**64"),
        ({"seed": 2**64}, "seed", "2**64"),
        ({"seed": 1.0}, "seed", "integer"),
        ({"repetition_penalty": 0}, "repetition_penalty", "at least 0.01"),
        ({"repetition_penalty": 0.001}, "repetition_penalty", "at least 0.01"),
        ({"frequency_penalty": 2.5}, "frequency_penalty", "[-2, 2]"),
        ({"presence_penalty": -2.01}, "presence_penalty", "[-2, 2]"),
        ({"presence_penalty": []}, "presence_penalty", "number"),
        ({"stop": [""]}, "stop", "empty string"),
        ({"stop": ""}, "stop", "empty string"),
        ({"stop": ["a", 1]}, "stop", "list of strings"),
        ({"stop": {"a": 1}}, "stop", "list of strings"),
        ({"stop_token_ids": [1, "2"]}, "stop_token_ids", "integers"),
        ({"stop_token_ids": [True]}, "stop_token_ids", "integers"),
        ({"stop_token_ids": 5}, "stop_token_ids", "integers"),
        ({"stop_token_ids": [-1]}, "stop_token_ids", ">= 0"),
        ({"skip_special_tokens": "false"}, "skip_special_tokens", "true or false"),
        ({"skip_special_tokens": None}, "skip_special_tokens", "true or false"),
        ({"logprobs": -1}, "logprobs", f"[0, {MAX_LOGPROBS}]"),
        ({"logprobs": MAX_LOGPROBS + 1}, "logprobs", f"[0, {MAX_LOGPROBS}]"),
        ({"logprobs": False}, "logprobs", "integer"),
        ({"logprobs": True}, "logprobs", "integer"),
        ({"logprobs": 1}, "logprobs", "only 0"),
        ({"logprobs": MAX_LOGPROBS}, "logprobs", "only 0"),
        ({"logprobs": 1.0}, "logprobs", "integer"),
    ],
)
def test_bad_sampling_values_name_the_key(values: dict[str, Any], key: str, match: str) -> None:
    err = refused(request(sampling_parameters=params(**values)))
    assert err.tensor == "sampling_parameters"
    assert err.reason.startswith(f"{key}: ")
    assert match in err.reason


def test_json_overflow_to_infinity_names_the_key() -> None:
    # 1e400 is valid JSON that Python reads as inf.
    err = refused(request(sampling_parameters=text('{"temperature": 1e400}')))
    assert err.reason == "temperature: must be a finite number, got inf"


@pytest.mark.parametrize("key", ["min_p", "n", "ignore_eos", "lora_name", "best_of", "Temperature"])
def test_a_key_the_engine_does_not_implement_is_refused_by_name(key: str) -> None:
    err = refused(request(sampling_parameters=params(**{key: 1, "max_tokens": 4})))
    assert err.tensor == "sampling_parameters"
    assert err.reason.startswith(f"{key}: not implemented")


def test_every_contract_key_is_accepted() -> None:
    values = {
        "max_tokens": 8,
        "temperature": 0.5,
        "top_p": 0.5,
        "top_k": 5,
        "seed": 1,
        "repetition_penalty": 1.2,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.1,
        "stop": ["x"],
        "stop_token_ids": [2],
        "skip_special_tokens": True,
        "logprobs": 0,
    }
    assert values.keys() == vc.SAMPLING_KEYS
    parse_vl_request(request(sampling_parameters=params(**values)))


# --- what the façade sends, the engine takes ------------------------------------------------------


def _as_tensors(req: Any) -> dict[str, np.ndarray]:
    """A ModelInferRequest's tensors as the python backend hands them to the model."""
    out = {}
    for tensor, raw in zip(req.inputs, req.raw_input_contents, strict=True):
        spec = vc.INPUTS_BY_NAME[tensor.name]
        if spec.data_type == "TYPE_STRING":
            arr = deserialize_bytes_tensor(raw)
        else:
            arr = np.frombuffer(raw, dtype=spec.numpy_dtype)
        out[tensor.name] = arr.reshape(list(tensor.shape))
    return out


@pytest.mark.parametrize(
    "sampling",
    [
        dict(temperature=0.7, runtime_top_k=0, runtime_top_p=1.0, seed=1, repetition_penalty=1.0),
        dict(temperature=1.0, runtime_top_k=1, runtime_top_p=1.0, seed=0, repetition_penalty=1.0),
        dict(
            temperature=2.0,
            runtime_top_k=50,
            runtime_top_p=0.85,
            seed=2**64 - 1,
            repetition_penalty=0.01,
            frequency_penalty=-2.0,
            presence_penalty=2.0,
            return_log_probs=True,
        ),
    ],
)
def test_the_facade_requests_parse(sampling: dict[str, Any]) -> None:
    # server/engine/text_request.py builds the façade's requests on this contract: every one
    # must be a request this engine implements (the engine refuses any key it does not).
    s = EngineSampling(**sampling)
    built = build_text_infer_request(
        TextEngineRequest(
            triton_model="vl",
            request_id="r",
            prompt=PROMPT,
            images=(PNG,),
            max_new_tokens=3000,
            sampling=s,
            stop=("</answer>",),
            skip_special_tokens=False,
        )
    )
    req = parse_vl_request(_as_tensors(built))
    assert (req.prompt, req.images, req.stream, req.prepend_input) == (PROMPT, (PNG,), True, False)
    assert (req.max_tokens, req.stop, req.skip_special_tokens) == (3000, ("</answer>",), False)
    assert req.sampling.seed == s.seed
    assert req.sampling.is_greedy == (s.runtime_top_k == 1)
    assert (req.logprobs == 0) == s.return_log_probs
    assert req.return_num_input_tokens and req.return_num_output_tokens
