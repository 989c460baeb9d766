"""The vLLM contract's request and response (text_request.py), checked against
triton_models/vllm_contract.py and against tritonclient's own encoding of BYTES tensors
(serialize_byte_tensor / deserialize_bytes_tensor): names, datatypes, shapes, raw contents."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from autoglm.server.engine.client import EngineSampling
from autoglm.server.engine.text_request import (
    TextEngineRequest,
    build_text_infer_request,
    parse_text_response,
    sampling_parameters,
)
from autoglm.server.errors import EngineFailure
from autoglm.triton_models import vllm_contract as vc

# Two tiny "image files" (any bytes: the request carries them, it does not read them).
IMAGES = (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"\xff\xd8\xff\xe0 jpeg \x00\x01")
NEUTRAL = EngineSampling(0.7, 0, 1.0, 1234, 1.0)


def text_request(**kw: Any) -> TextEngineRequest:
    base: dict[str, Any] = {
        "triton_model": "vl",
        "request_id": "r-1",
        "prompt": "<|begin_of_image|><|image|><|end_of_image|>\nwhat is this? café 東京",
        "images": IMAGES[:1],
        "max_new_tokens": 64,
        "sampling": NEUTRAL,
    }
    base.update(kw)
    return TextEngineRequest(**base)


def tensors(req: service_pb2.ModelInferRequest) -> dict[str, tuple[str, list[int], bytes]]:
    """name → (datatype, shape, raw contents); each name once."""
    assert len(req.inputs) == len(req.raw_input_contents)
    out = {
        t.name: (t.datatype, list(t.shape), raw)
        for t, raw in zip(req.inputs, req.raw_input_contents, strict=True)
    }
    assert len(out) == len(req.inputs), "a tensor sent twice"
    return out


def elements(raw: bytes) -> list[bytes]:
    return list(deserialize_bytes_tensor(raw))


def params_of(req: service_pb2.ModelInferRequest) -> dict[str, Any]:
    (raw,) = elements(tensors(req)[vc.SAMPLING_PARAMETERS.name][2])
    return json.loads(raw)


def test_every_tensor_is_the_contracts_with_its_datatype_and_shape() -> None:
    req = build_text_infer_request(text_request(images=IMAGES))
    sent = tensors(req)
    assert sent.keys() <= vc.INPUTS_BY_NAME.keys()
    for name, (datatype, shape, _) in sent.items():
        spec = vc.INPUTS_BY_NAME[name]
        assert datatype == spec.wire_dtype, name
        # max_batch_size 0: the dims are the whole shape (-1 is the element count).
        assert len(shape) == len(spec.dims), name
        assert all(d in (-1, s) for d, s in zip(spec.dims, shape, strict=True)), name
    required = {spec.name for spec in vc.INPUTS if not spec.optional}
    assert required <= sent.keys()
    assert sent[vc.IMAGE.name][1] == [len(IMAGES)]
    assert (req.model_name, req.id) == ("vl", "r-1")


def test_the_empty_final_response_is_asked_for() -> None:
    req = build_text_infer_request(text_request())
    assert req.parameters["triton_enable_empty_final_response"].bool_param is True


def test_the_prompt_is_utf8_text() -> None:
    r = text_request()
    (prompt,) = elements(tensors(build_text_infer_request(r))[vc.TEXT_INPUT.name][2])
    assert prompt.decode() == r.prompt


def test_images_go_as_base64_text_in_order_and_decode_back_equal() -> None:
    sent = tensors(build_text_infer_request(text_request(images=IMAGES)))
    datatype, shape, raw = sent[vc.IMAGE.name]
    values = elements(raw)
    assert (datatype, shape) == ("BYTES", [2])
    assert [base64.b64decode(v, validate=True) for v in values] == list(IMAGES)
    assert all(v.isascii() for v in values)
    # The same bytes as tritonclient's own serialization of those elements.
    assert raw == serialize_byte_tensor(np.array(values, dtype=np.object_)).item()


def test_a_text_only_request_sends_no_image_tensor() -> None:
    assert vc.IMAGE.name not in tensors(build_text_infer_request(text_request(images=())))


def test_streaming_with_the_input_excluded_and_the_counts_asked_for() -> None:
    sent = tensors(build_text_infer_request(text_request()))
    for spec in (
        vc.STREAM,
        vc.EXCLUDE_INPUT_IN_OUTPUT,
        vc.RETURN_FINISH_REASON,
        vc.RETURN_NUM_INPUT_TOKENS,
        vc.RETURN_NUM_OUTPUT_TOKENS,
    ):
        assert sent[spec.name] == ("BOOL", [1], struct.pack("<?", True)), spec.name
    assert vc.RETURN_LOGPROBS.name not in sent  # only when asked (the backend then needs logprobs)
    assert vc.RETURN_CUMULATIVE_LOGPROB.name not in sent


def test_sampling_parameters_are_vllm_keywords_in_json() -> None:
    r = text_request(sampling=EngineSampling(0.7, 40, 0.9, 2**64 - 1, 1.1, 0.5, -0.25))
    params = params_of(build_text_infer_request(r))
    assert params.keys() <= vc.SAMPLING_KEYS
    assert params == {
        "max_tokens": 64,
        "seed": 2**64 - 1,
        "temperature": pytest.approx(0.7),
        "top_k": 40,
        "top_p": pytest.approx(0.9),
        "repetition_penalty": pytest.approx(1.1),
        "frequency_penalty": 0.5,
        "presence_penalty": -0.25,
    }
    assert params == sampling_parameters(r)


def test_neutral_values_are_left_out() -> None:
    params = params_of(build_text_infer_request(text_request()))
    assert params == {"max_tokens": 64, "seed": 1234, "temperature": pytest.approx(0.7)}


def test_greedy_is_temperature_zero() -> None:
    # plan.engine_sampling's greedy: top_k 1 with temperature 1 (TensorRT-LLM's way).
    greedy = EngineSampling(1.0, 1, 1.0, 7, 1.0)
    params = sampling_parameters(text_request(sampling=greedy))
    assert params == {"max_tokens": 64, "seed": 7, "temperature": 0.0}


def test_stop_strings_logprobs_and_special_tokens_only_when_set() -> None:
    r = text_request(
        stop=("</answer>", "\n\n"),
        skip_special_tokens=False,
        sampling=EngineSampling(0.7, 0, 1.0, 1, 1.0, return_log_probs=True),
    )
    req = build_text_infer_request(r)
    params = params_of(req)
    assert params["stop"] == ["</answer>", "\n\n"]
    assert params["logprobs"] == 0  # the chosen token's only
    assert params["skip_special_tokens"] is False
    assert tensors(req)[vc.RETURN_LOGPROBS.name] == ("BOOL", [1], struct.pack("<?", True))
    plain = params_of(build_text_infer_request(text_request()))
    assert not {"stop", "logprobs", "skip_special_tokens"} & plain.keys()


# ---- responses --------------------------------------------------------------------------------


def response(
    outputs: dict[str, bytes] | None = None, *, final: bool = False, error: str = ""
) -> service_pb2.ModelStreamInferResponse:
    """A streamed response as Triton sends it: outputs in order with their raw contents."""
    resp = service_pb2.ModelStreamInferResponse(error_message=error)
    infer = resp.infer_response
    infer.model_name, infer.id = "vl", "r-1"
    if final:
        infer.parameters["triton_final_response"].bool_param = True
    for name, raw in (outputs or {}).items():
        spec = vc.OUTPUTS_BY_NAME[name]
        out = infer.outputs.add()
        out.name, out.datatype = name, spec.wire_dtype
        out.shape.append(1)
        infer.raw_output_contents.append(raw)
    return resp


def text(*items: str | bytes) -> bytes:
    values = [i.encode() if isinstance(i, str) else i for i in items]
    return serialize_byte_tensor(np.array(values, dtype=np.object_)).item()


def uint32(value: int) -> bytes:
    return np.array([value], dtype=np.uint32).tobytes()


def test_a_step_with_text_and_counts() -> None:
    step = parse_text_response(
        response(
            {
                "text_output": text("Bonjour, 東京 🙂"),
                "finish_reason": text("None"),
                "num_input_tokens": uint32(3141),
                "num_output_tokens": uint32(5),
            }
        )
    )
    assert step.text == "Bonjour, 東京 🙂"
    assert (step.new_tokens, step.input_tokens) == (5, 3141)
    assert step.finish_reason is None  # str(None) until the end
    assert step.logprobs is None
    assert step.final is False


@pytest.mark.parametrize("reason", [vc.FINISH_STOP, vc.FINISH_LENGTH, vc.FINISH_ABORT])
def test_the_last_step_carries_the_finish_reason_and_the_final_flag(reason: str) -> None:
    step = parse_text_response(
        response(
            {
                "text_output": text("."),
                "finish_reason": text(reason),
                "num_output_tokens": uint32(1),
            },
            final=True,
        )
    )
    assert (step.text, step.new_tokens, step.finish_reason, step.final) == (".", 1, reason, True)
    assert step.input_tokens is None  # not sent: not guessed


def test_the_empty_final_response() -> None:
    step = parse_text_response(response(final=True))
    assert (step.text, step.new_tokens, step.finish_reason, step.final) == ("", 0, None, True)


def test_logprobs_json_gives_the_chosen_tokens_values() -> None:
    # The backend's JSON: per new token {token_id: {logprob, rank, decoded_token}} (ids as keys).
    steps = [
        {"791": {"logprob": -0.25, "rank": 1, "decoded_token": "The"}},
        {"4320": {"logprob": -1.5, "rank": 2, "decoded_token": " end"}},
    ]
    step = parse_text_response(
        response(
            {
                "text_output": text("The end"),
                "logprobs": text(json.dumps(steps)),
                "num_output_tokens": uint32(2),
            }
        )
    )
    assert step.logprobs == [-0.25, -1.5]


def test_null_logprobs_are_none_chosen() -> None:
    step = parse_text_response(response({"logprobs": text("null")}))
    assert step.logprobs == []


@pytest.mark.parametrize("bad", ["not json", '[{"1": {"rank": 1}}]', "[{}]", '[{"1": 3}]'])
def test_unreadable_logprobs_are_an_engine_failure(bad: str) -> None:
    with pytest.raises(EngineFailure, match="logprobs"):
        parse_text_response(response({"logprobs": text(bad)}))


def test_an_error_message_is_an_engine_failure() -> None:
    with pytest.raises(EngineFailure, match="model crashed"):
        parse_text_response(response({"text_output": text("x")}, error="model crashed"))


def test_text_that_is_not_utf8_is_an_engine_failure() -> None:
    with pytest.raises(EngineFailure, match="UTF-8"):
        parse_text_response(response({"text_output": text(b"\xff\xfe half")}))


@pytest.mark.parametrize("raw", [b"", b"\x01\x00", struct.pack("<I", 10) + b"short"])
def test_an_empty_or_truncated_text_output_is_an_engine_failure(raw: bytes) -> None:
    with pytest.raises(EngineFailure, match="text_output"):
        parse_text_response(response({"text_output": raw}))


def test_what_the_engine_serializes_parses_back() -> None:
    """A response through protobuf's wire format, as stream_text_into reads it."""
    sent = response(
        {"text_output": text("ok"), "num_output_tokens": uint32(1), "finish_reason": text("stop")},
        final=True,
    )
    wire = service_pb2.ModelStreamInferResponse.FromString(sent.SerializeToString())
    step = parse_text_response(wire)
    assert (step.text, step.new_tokens, step.finish_reason, step.final) == ("ok", 1, "stop", True)
