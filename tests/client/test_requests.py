"""Request building and response conversion, shared by both clients (no server needed)."""

from __future__ import annotations

import grpc
import pytest

from autoglm.client import Completion, ConfigError, Delta, InvalidArgumentError, ModelInfo
from autoglm.client._requests import (
    Sampling,
    build_count_tokens_request,
    build_generate_request,
    completion_from_response,
    delta_from_response,
    model_info_from_proto,
    only_model,
    token_count_from_response,
)
from autoglm.v1 import text_generation_pb2 as pb


def test_prompt_request_leaves_every_default_unset() -> None:
    request = build_generate_request("Hello", messages=None, sampling=Sampling(), model="m")
    assert request.prompt == "Hello" and request.model == "m"
    assert not request.messages
    assert not request.HasField("sampling")  # "unset = all defaults" in the proto
    assert request.request_id == ""


def test_sampling_sets_only_what_was_given() -> None:
    request = build_generate_request(
        "Hi", messages=None, sampling=Sampling(max_tokens=16, temperature=0.0, seed=7)
    )
    sampling = request.sampling
    assert sampling.max_tokens == 16
    assert sampling.HasField("temperature") and sampling.temperature == 0.0  # 0 = greedy, kept
    assert sampling.HasField("seed") and sampling.seed == 7
    for name in ("top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty"):
        assert not sampling.HasField(name)
    assert sampling.logprobs is False


def test_all_sampling_fields() -> None:
    sampling = Sampling(
        max_tokens=8,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        seed=2**64 - 1,
        stop=["\n", "###"],
        repetition_penalty=1.1,
        frequency_penalty=0.5,
        presence_penalty=-2.0,
        logprobs=True,
    ).to_proto()
    assert sampling.top_p == pytest.approx(0.9) and sampling.top_k == 40
    assert sampling.seed == 2**64 - 1
    assert list(sampling.stop) == ["\n", "###"]
    assert sampling.repetition_penalty == pytest.approx(1.1)
    assert (sampling.frequency_penalty, sampling.presence_penalty) == (0.5, -2.0)
    assert sampling.logprobs is True


def test_zero_penalties_are_sent_as_set() -> None:
    # 0.0 is a value the caller chose (proto3 `optional`), distinguishable from unset.
    sampling = Sampling(frequency_penalty=0.0, presence_penalty=0.0).to_proto()
    assert sampling.HasField("frequency_penalty") and sampling.HasField("presence_penalty")


def test_single_stop_string_is_not_split_into_characters() -> None:
    assert list(Sampling(stop="END").to_proto().stop) == ["END"]


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (Sampling(max_tokens=2**31), "sampling.max_tokens"),  # int32 in the contract
        (Sampling(seed=-5), "sampling.seed"),
        (Sampling(temperature="hot"), "sampling.temperature"),  # type: ignore[arg-type]
        (Sampling(stop=["ok", 3]), "sampling.stop[1]"),  # type: ignore[list-item]
        (Sampling(presence_penalty="high"), "sampling.presence_penalty"),  # type: ignore[arg-type]
        (Sampling(logprobs="yes"), "sampling.logprobs"),  # type: ignore[arg-type]
    ],
)
def test_unrepresentable_sampling_is_invalid_argument(sampling: Sampling, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        sampling.to_proto()
    assert info.value.field_violations[0][0] == field
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_range_checks_are_left_to_the_server() -> None:
    # Out of the contract's ranges but representable: the server decides and names the field
    # (max_tokens and top_k are signed in the proto precisely so that a bad value reaches it).
    params = Sampling(max_tokens=-1, temperature=5.0, top_k=5000).to_proto()
    assert (params.max_tokens, params.temperature, params.top_k) == (-1, 5.0, 5000)
    assert Sampling(frequency_penalty=7.0).to_proto().frequency_penalty == 7.0


def test_request_id_passed_through() -> None:
    request = build_generate_request("x", messages=None, sampling=Sampling(), request_id="my-req.1")
    assert request.request_id == "my-req.1"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [("system", "Be brief."), ("user", "Hi")],
        [("system", "Be brief."), {"role": "user", "content": "Hi"}],
        iter([["system", "Be brief."], ("user", "Hi")]),  # any iterable of 2-sequences
    ],
)
def test_messages_formats(messages: object) -> None:
    request = build_generate_request(None, messages=messages, sampling=Sampling())  # type: ignore[arg-type]
    assert request.prompt == ""
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]


@pytest.mark.parametrize(
    ("prompt", "messages", "match"),
    [
        (None, None, "non-empty prompt or at least one message"),
        ("", [], "non-empty prompt or at least one message"),
        ("Hi", [("user", "Hi")], "not both"),
        (None, [{"role": "user"}], r"messages\[0\]: missing content"),
        (None, [{"content": "x"}], r"messages\[0\]: missing role"),
        (None, [("user", "ok"), ("user",)], r"messages\[1\]"),
        (None, ["user: hi"], r"messages\[0\]"),
        (None, [("user", 5)], "content must be a string or a list"),
        (None, [(5, "hi")], "role must be a string"),
        (None, [("user", ["hi", 5])], r"messages\[0\]\.parts\[1\]: must be a string or an Image"),
        (b"bytes", None, "prompt: must be a string"),
    ],
)
def test_invalid_prompt_shapes(prompt: object, messages: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        build_generate_request(prompt, messages=messages, sampling=Sampling())  # type: ignore[arg-type]


def test_count_tokens_request() -> None:
    request = build_count_tokens_request(None, messages=[("user", "Hi")], model="m")
    assert request.model == "m" and request.prompt == ""
    assert request.messages[0].content == "Hi"
    with pytest.raises(InvalidArgumentError):
        build_count_tokens_request("a", messages=[("user", "b")])


def _model(name: str) -> ModelInfo:
    return ModelInfo(name, "cpu_reference", 2048, 512, 128, True)


def test_only_model() -> None:
    assert only_model([_model("smollm2")]) == "smollm2"
    with pytest.raises(ConfigError, match="lists no models"):
        only_model([])
    with pytest.raises(ConfigError, match=r"has 2 \(a, b\).*model="):
        only_model([_model("a"), _model("b")])


def test_completion_from_response() -> None:
    response = pb.GenerateResponse(
        request_id="r1",
        text=" Paris.",
        token_ids=[7042, 30],
        finish_reason=pb.FINISH_REASON_STOP,
        usage=pb.Usage(prompt_tokens=6, completion_tokens=3),
        model="smollm2",
    )
    assert completion_from_response(response) == Completion(
        request_id="r1",
        model="smollm2",
        text=" Paris.",
        token_ids=(7042, 30),
        finish_reason="stop",
        prompt_tokens=6,
        completion_tokens=3,
    )


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (pb.FINISH_REASON_LENGTH, "length"),
        (pb.FINISH_REASON_CANCELLED, "cancelled"),
        (pb.FINISH_REASON_UNSPECIFIED, "unspecified"),
        (99, "unspecified"),  # a reason added by a newer server
    ],
)
def test_finish_reasons(reason: int, text: str) -> None:
    response = pb.GenerateResponse(finish_reason=reason)  # type: ignore[arg-type]
    assert completion_from_response(response).finish_reason == text


def test_logprobs_are_carried_with_their_ids() -> None:
    response = pb.GenerateResponse(token_ids=[7042, 30], logprobs=[-0.25, -1.5])
    assert completion_from_response(response).logprobs == (-0.25, -1.5)
    assert delta_from_response(response).logprobs == (-0.25, -1.5)
    assert completion_from_response(pb.GenerateResponse(token_ids=[1])).logprobs == ()


def test_middle_delta_has_no_finish_or_usage() -> None:
    delta = delta_from_response(pb.GenerateResponse(request_id="r", text="Pa", token_ids=[1]))
    assert delta == Delta(request_id="r", text="Pa", token_ids=(1,))
    assert delta.finish_reason is None and delta.prompt_tokens is None


def test_last_delta_has_finish_and_usage() -> None:
    response = pb.GenerateResponse(
        request_id="r",
        finish_reason=pb.FINISH_REASON_LENGTH,
        usage=pb.Usage(prompt_tokens=4, completion_tokens=0),
    )
    delta = delta_from_response(response)
    assert delta.finish_reason == "length"
    assert (delta.prompt_tokens, delta.completion_tokens) == (4, 0)  # zero, not None


def test_model_info_and_token_count() -> None:
    info = model_info_from_proto(
        pb.ModelInfo(
            name="smollm2",
            engine="cpu_reference",
            max_context_tokens=2048,
            max_output_tokens=512,
            default_max_tokens=128,
            has_chat_template=True,
        )
    )
    assert info == _model("smollm2")
    count = token_count_from_response(
        pb.CountTokensResponse(model="smollm2", prompt_tokens=2, token_ids=[5, 6])
    )
    assert count.token_ids == (5, 6) and count.prompt_tokens == 2
