"""VlResponses: the output tensors the CPU vision-language engine sends, as vllm_backend's
`create_response` builds them (8de0c14, src/utils/request.py) — values, dtypes and shapes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.cpu_engine.sampling import SamplingConfig
from autoglm.triton_models.cpu_vl.request import VlRequest
from autoglm.triton_models.cpu_vl.responses import VlResponses

PROMPT = "Describe <|begin_of_image|><|image|><|end_of_image|>"
ALL_FLAGS = {
    "return_finish_reason": True,
    "return_cumulative_logprob": True,
    "return_logprobs": True,
    "return_num_input_tokens": True,
    "return_num_output_tokens": True,
}


def vl_request(*, stream: bool = True, logprobs: int | None = None, **flags: bool) -> VlRequest:
    return VlRequest(
        prompt=PROMPT,
        images=(b"png",),
        stream=stream,
        prepend_input=not stream,
        max_tokens=8,
        sampling=SamplingConfig(),
        logprobs=logprobs,
        **flags,
    )


def decode(token: int) -> str:
    return f"<{token}>"


def texts(arr: np.ndarray) -> list[str]:
    return [b.decode() for b in arr]


def test_text_only_without_flags() -> None:
    out = VlResponses(vl_request(), decode)
    first = out.add("Hel", (11,), (), 40, None)
    assert list(first) == ["text_output"]
    assert first["text_output"].dtype == np.object_
    assert first["text_output"].shape == (1,)
    assert texts(first["text_output"]) == ["Hel"]


def test_streamed_responses_carry_the_step() -> None:
    out = VlResponses(vl_request(logprobs=0, **ALL_FLAGS), decode)
    first = out.add("Hel", (11,), (-0.5,), 40, None)
    last = out.add("lo", (12, 13), (-0.25, -1.0), 40, vc.FINISH_LENGTH)
    assert texts(first["text_output"]) == ["Hel"]
    assert texts(first["finish_reason"]) == ["None"]  # str(None), as the backend sends it
    assert texts(last["text_output"]) == ["lo"]
    assert texts(last["finish_reason"]) == ["length"]
    # num_input_tokens: a 0-d uint32, as np.asarray(len(prompt_token_ids), dtype=np.uint32).
    assert last["num_input_tokens"].shape == ()
    assert last["num_input_tokens"].dtype == np.uint32
    assert int(last["num_input_tokens"]) == 40
    assert last["num_output_tokens"].tolist() == [2]  # new tokens of this response
    assert last["num_output_tokens"].dtype == np.uint32
    # cumulative_logprob: the whole output's so far.
    assert last["cumulative_logprob"].dtype == np.float32
    assert last["cumulative_logprob"].tolist() == [pytest.approx(-1.75)]
    assert first["cumulative_logprob"].tolist() == [pytest.approx(-0.5)]
    # logprobs: this response's new tokens only, ids as JSON keys.
    assert json.loads(texts(last["logprobs"])[0]) == [
        {"12": {"logprob": -0.25, "rank": None, "decoded_token": "<12>"}},
        {"13": {"logprob": -1.0, "rank": None, "decoded_token": "<13>"}},
    ]


def test_whole_response_prepends_the_prompt() -> None:
    out = VlResponses(vl_request(stream=False, **ALL_FLAGS), decode)
    out.add("Hel", (11,), (), 40, None)
    out.add("lo", (12,), (), 40, None)
    out.add("", (2,), (), 40, vc.FINISH_STOP)  # the end-of-sequence token adds no text
    whole = out.whole()
    assert texts(whole["text_output"]) == [PROMPT + "Hello"]
    assert texts(whole["finish_reason"]) == ["stop"]
    assert whole["num_output_tokens"].tolist() == [3]
    assert int(whole["num_input_tokens"]) == 40


def test_whole_response_without_the_prompt() -> None:
    req = VlRequest(
        prompt=PROMPT,
        images=(),
        stream=False,
        prepend_input=False,
        max_tokens=8,
        sampling=SamplingConfig(),
    )
    out = VlResponses(req, decode)
    out.add("Hi", (5,), (), 3, vc.FINISH_LENGTH)
    assert texts(out.whole()["text_output"]) == ["Hi"]


def test_logprobs_not_asked_in_sampling_parameters() -> None:
    # vLLM computes none: logprobs "null", cumulative_logprob None → NaN in FP32.
    out = VlResponses(vl_request(logprobs=None, **ALL_FLAGS), decode)
    step = out.add("a", (7,), (), 4, None)
    assert texts(step["logprobs"]) == ["null"]
    assert math.isnan(step["cumulative_logprob"][0])


def test_a_step_must_carry_one_logprob_per_token() -> None:
    out = VlResponses(vl_request(logprobs=0, return_logprobs=True), decode)
    with pytest.raises(ValueError, match="1 log-probabilities for 2 tokens"):
        out.add("ab", (1, 2), (-0.1,), 4, None)


def test_non_ascii_text_is_utf8() -> None:
    out = VlResponses(vl_request(), decode)
    step = out.add("你好", (9,), (), 4, None)
    assert step["text_output"][0] == "你好".encode()
