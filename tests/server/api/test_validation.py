"""Request validation: every violation named by field, all reported at once; defaults; limits."""

from __future__ import annotations

import math
from typing import Any

import pytest

from autoglm.server.api.validation import (
    MAX_MESSAGES,
    MAX_PROMPT_BYTES,
    MAX_STOP_BYTES,
    MAX_STOP_STRINGS,
    MAX_TOP_K,
    request_id_of,
    validate_count_tokens,
    validate_generate,
)
from autoglm.server.engine.client import EngineSampling
from autoglm.server.errors import InvalidArgument
from autoglm.server.generation.plan import Sampling, engine_sampling, resolve_max_tokens
from autoglm.server.tokenization import Message
from autoglm.v1 import text_generation_pb2 as pb


def generate(**fields: Any) -> pb.GenerateRequest:
    """A valid GenerateRequest (model + prompt) with ``fields`` overriding; sampling is a dict."""
    sampling = fields.pop("sampling", None)
    base: dict[str, Any] = {"model": "smollm2", "prompt": "Hello"}
    base.update(fields)
    req = pb.GenerateRequest(**base)
    if sampling is not None:
        req.sampling.CopyFrom(pb.SamplingParams(**sampling))
    return req


def violations(req: pb.GenerateRequest | pb.CountTokensRequest) -> list[tuple[str, str]]:
    validate = validate_generate if isinstance(req, pb.GenerateRequest) else validate_count_tokens
    with pytest.raises(InvalidArgument) as info:
        validate(req)  # type: ignore[arg-type]
    return info.value.violations


def fields_of(req: pb.GenerateRequest | pb.CountTokensRequest) -> list[str]:
    return [field for field, _ in violations(req)]


# --- model / prompt / messages ---------------------------------------------------------------


def test_minimal_valid_request() -> None:
    plan = validate_generate(generate())
    assert plan.model == "smollm2"
    assert plan.input.prompt == "Hello"
    assert plan.input.messages == ()


def test_empty_model() -> None:
    assert violations(generate(model="")) == [("model", "required")]


def test_both_prompt_and_messages() -> None:
    req = generate(messages=[pb.ChatMessage(role="user", content="hi")])
    [(field, desc)] = violations(req)
    assert field == "prompt"
    assert "not both" in desc


def test_neither_prompt_nor_messages() -> None:
    [(field, desc)] = violations(generate(prompt=""))
    assert field == "prompt"
    assert "required" in desc


def test_messages_are_converted_in_order() -> None:
    msgs = [
        pb.ChatMessage(role="system", content="Be brief."),
        pb.ChatMessage(role="user", content="Bonjour, 你好"),
        pb.ChatMessage(role="assistant", content=""),
    ]
    plan = validate_generate(generate(prompt="", messages=msgs))
    assert plan.input.prompt is None
    assert plan.input.messages == (
        Message("system", "Be brief."),
        Message("user", "Bonjour, 你好"),
        Message("assistant", ""),
    )


@pytest.mark.parametrize("role", ["", "User", "tool", "function", " user"])
def test_bad_role_names_the_message_index(role: str) -> None:
    msgs = [pb.ChatMessage(role="user", content="a"), pb.ChatMessage(role=role, content="b")]
    [(field, desc)] = violations(generate(prompt="", messages=msgs))
    assert field == "messages[1].role"
    assert repr(role) in desc


def test_every_bad_role_is_reported() -> None:
    msgs = [pb.ChatMessage(role="bot", content="a"), pb.ChatMessage(role="x", content="b")]
    assert fields_of(generate(prompt="", messages=msgs)) == [
        "messages[0].role",
        "messages[1].role",
    ]


def test_prompt_at_byte_limit_is_accepted() -> None:
    validate_generate(generate(prompt="a" * MAX_PROMPT_BYTES))


def test_prompt_over_byte_limit() -> None:
    [(field, desc)] = violations(generate(prompt="a" * (MAX_PROMPT_BYTES + 1)))
    assert field == "prompt"
    assert str(MAX_PROMPT_BYTES) in desc


def test_prompt_limit_counts_utf8_bytes_not_characters() -> None:
    # "é" is 2 bytes: half the limit in characters is exactly the limit in bytes.
    validate_generate(generate(prompt="é" * (MAX_PROMPT_BYTES // 2)))
    assert fields_of(generate(prompt="é" * (MAX_PROMPT_BYTES // 2) + "a")) == ["prompt"]


def test_too_many_messages() -> None:
    msgs = [pb.ChatMessage(role="user", content="x")] * (MAX_MESSAGES + 1)
    assert fields_of(generate(prompt="", messages=msgs)) == ["messages"]
    validate_generate(generate(prompt="", messages=msgs[:MAX_MESSAGES]))


def test_messages_total_bytes_limit() -> None:
    half = "a" * (MAX_PROMPT_BYTES // 2)
    ok = [pb.ChatMessage(role="user", content=half)] * 2
    validate_generate(generate(prompt="", messages=ok))
    too_long = [*ok, pb.ChatMessage(role="user", content="a")]
    assert fields_of(generate(prompt="", messages=too_long)) == ["messages"]


# --- request id ------------------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["a", "req-1", "A.b_c:d-9", "x" * 64])
def test_good_request_id_is_echoed(rid: str) -> None:
    assert validate_generate(generate(request_id=rid)).request_id == rid


@pytest.mark.parametrize("rid", ["x" * 65, "has space", "slash/", "é", "new\nline", "a\n"])
def test_bad_request_id(rid: str) -> None:
    [(field, _)] = violations(generate(request_id=rid))
    assert field == "request_id"


def test_missing_request_id_gets_a_fresh_one() -> None:
    first = validate_generate(generate()).request_id
    second = validate_generate(generate()).request_id
    assert first != second
    assert request_id_of(first) == first  # well formed, so it would be echoed back


# --- sampling ranges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"max_tokens": -1}, "sampling.max_tokens"),
        ({"temperature": -0.01}, "sampling.temperature"),
        ({"temperature": 2.01}, "sampling.temperature"),
        ({"temperature": math.nan}, "sampling.temperature"),
        ({"temperature": math.inf}, "sampling.temperature"),
        ({"temperature": -math.inf}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_p": -0.5}, "sampling.top_p"),
        ({"top_p": 1.01}, "sampling.top_p"),
        ({"top_p": math.nan}, "sampling.top_p"),
        ({"top_k": MAX_TOP_K + 1}, "sampling.top_k"),
        ({"top_k": -1}, "sampling.top_k"),
        ({"repetition_penalty": 0.0}, "sampling.repetition_penalty"),
        ({"repetition_penalty": -0.0}, "sampling.repetition_penalty"),
        # Denormals: the engine would divide logits by them (inf, then NaN probabilities).
        ({"repetition_penalty": 1e-45}, "sampling.repetition_penalty"),
        ({"repetition_penalty": 1.17549435e-38}, "sampling.repetition_penalty"),
        ({"repetition_penalty": 0.0099}, "sampling.repetition_penalty"),
        ({"repetition_penalty": -1.0}, "sampling.repetition_penalty"),
        ({"repetition_penalty": 2.01}, "sampling.repetition_penalty"),
        ({"repetition_penalty": math.nan}, "sampling.repetition_penalty"),
        ({"repetition_penalty": math.inf}, "sampling.repetition_penalty"),
        ({"frequency_penalty": 2.01}, "sampling.frequency_penalty"),
        ({"frequency_penalty": -2.01}, "sampling.frequency_penalty"),
        ({"frequency_penalty": math.nan}, "sampling.frequency_penalty"),
        ({"frequency_penalty": math.inf}, "sampling.frequency_penalty"),
        ({"frequency_penalty": -3.4e38}, "sampling.frequency_penalty"),
        ({"presence_penalty": 2.5}, "sampling.presence_penalty"),
        ({"presence_penalty": -2.01}, "sampling.presence_penalty"),
        ({"presence_penalty": math.nan}, "sampling.presence_penalty"),
        ({"presence_penalty": -math.inf}, "sampling.presence_penalty"),
        ({"stop": ["s"] * (MAX_STOP_STRINGS + 1)}, "sampling.stop"),
    ],
)
def test_sampling_out_of_range(sampling: dict[str, Any], field: str) -> None:
    [(got, desc)] = violations(generate(sampling=sampling))
    assert got == field
    assert desc


@pytest.mark.parametrize(
    "sampling",
    [
        {"max_tokens": 0},
        {"max_tokens": 1},
        {"temperature": 0.0},
        {"temperature": -0.0},
        {"temperature": 1e-45},  # a float32 denormal: greedy (engine_sampling)
        {"temperature": 2.0},
        {"top_p": 1.0},
        {"top_p": 1e-6},
        {"top_k": 0},
        {"top_k": 1},
        {"top_k": MAX_TOP_K},
        {"repetition_penalty": 2.0},
        {"repetition_penalty": 0.01},
        {"frequency_penalty": 2.0},
        {"frequency_penalty": -2.0},
        {"frequency_penalty": -0.0},
        {"presence_penalty": 2.0},
        {"presence_penalty": -2.0},
        {"presence_penalty": 1e-45},
        {"logprobs": True},
        {"stop": ["s"] * MAX_STOP_STRINGS},
        {"stop": ["x" * MAX_STOP_BYTES]},
    ],
)
def test_sampling_boundaries_are_accepted(sampling: dict[str, Any]) -> None:
    validate_generate(generate(sampling=sampling))


def test_empty_and_too_long_stop_strings_name_their_index() -> None:
    stops = ["ok", "", "x" * (MAX_STOP_BYTES + 1), "é" * (MAX_STOP_BYTES // 2 + 1)]
    assert fields_of(generate(sampling={"stop": stops})) == [
        "sampling.stop[1]",
        "sampling.stop[2]",
        "sampling.stop[3]",
    ]


def test_max_tokens_message_mentions_the_value() -> None:
    [(_, desc)] = violations(generate(sampling={"max_tokens": -5}))
    assert "-5" in desc


# --- several at once -------------------------------------------------------------------------


def test_all_violations_are_reported_together() -> None:
    req = pb.GenerateRequest(
        model="",
        prompt="p",
        messages=[pb.ChatMessage(role="robot", content="c")],
        request_id="bad id",
        sampling=pb.SamplingParams(
            max_tokens=-1,
            temperature=3.0,
            top_p=0.0,
            top_k=5000,
            repetition_penalty=0.0,
            frequency_penalty=3.0,
            presence_penalty=-3.0,
            stop=["", "ok"],
        ),
    )
    assert fields_of(req) == [
        "request_id",
        "model",
        "prompt",
        "messages[0].role",
        "sampling.max_tokens",
        "sampling.temperature",
        "sampling.top_p",
        "sampling.top_k",
        "sampling.repetition_penalty",
        "sampling.frequency_penalty",
        "sampling.presence_penalty",
        "sampling.stop[0]",
    ]


def test_invalid_argument_message_lists_every_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_generate(generate(model="", sampling={"top_k": -1}))
    assert "model: required" in info.value.message
    assert "sampling.top_k:" in info.value.message


# --- defaults --------------------------------------------------------------------------------


def test_sampling_defaults_when_unset() -> None:
    s = validate_generate(generate()).sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.stop) == (
        0,
        1.0,
        1.0,
        0,
        1.0,
        (),
    )
    assert 0 <= s.seed < 2**63
    assert (s.frequency_penalty, s.presence_penalty, s.logprobs) == (0.0, 0.0, False)


def test_penalties_and_logprobs_are_kept() -> None:
    s = validate_generate(
        generate(sampling={"frequency_penalty": 0.5, "presence_penalty": -1.25, "logprobs": True})
    ).sampling
    assert (s.frequency_penalty, s.presence_penalty, s.logprobs) == (0.5, -1.25, True)


@pytest.mark.parametrize("field", ["frequency_penalty", "presence_penalty"])
def test_additive_penalty_message_names_the_range_and_value(field: str) -> None:
    [(got, desc)] = violations(generate(sampling={field: 2.5}))
    assert got == f"sampling.{field}"
    assert "[-2, 2]" in desc and "2.5" in desc


def test_unset_seed_is_random_per_request() -> None:
    seeds = {validate_generate(generate()).sampling.seed for _ in range(4)}
    assert len(seeds) == 4


@pytest.mark.parametrize("seed", [0, 1, 2**64 - 1])
def test_explicit_seed_is_kept(seed: int) -> None:
    # seed 0 is a real seed (proto3 `optional`), not "unset".
    assert validate_generate(generate(sampling={"seed": seed})).sampling.seed == seed


def test_explicit_zero_temperature_is_not_replaced_by_default() -> None:
    s = validate_generate(generate(sampling={"temperature": 0.0, "top_k": 0})).sampling
    assert s.temperature == 0.0
    assert s.top_k == 0


def test_stop_strings_are_kept_in_order() -> None:
    s = validate_generate(generate(sampling={"stop": ["\n\n", "User:"]})).sampling
    assert s.stop == ("\n\n", "User:")


# --- resolve_max_tokens ----------------------------------------------------------------------

LIMITS = {"max_context": 2048, "max_output": 1024, "default": 256}


def test_default_max_tokens() -> None:
    assert resolve_max_tokens(0, prompt_tokens=10, **LIMITS) == 256


def test_default_is_clamped_to_the_room_left() -> None:
    assert resolve_max_tokens(0, prompt_tokens=2000, **LIMITS) == 48


def test_default_is_clamped_to_max_output() -> None:
    limits = {**LIMITS, "default": 4096}
    assert resolve_max_tokens(0, prompt_tokens=10, **limits) == 1024


def test_requested_within_limits_is_returned() -> None:
    assert resolve_max_tokens(1024, prompt_tokens=1024, **LIMITS) == 1024
    assert resolve_max_tokens(1, prompt_tokens=2047, **LIMITS) == 1


def test_requested_over_max_output() -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_max_tokens(1025, prompt_tokens=1, **LIMITS)
    [(field, desc)] = info.value.violations
    assert field == "sampling.max_tokens"
    assert "1024" in desc


def test_requested_over_the_room_left() -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_max_tokens(100, prompt_tokens=2000, **LIMITS)
    [(field, desc)] = info.value.violations
    assert field == "sampling.max_tokens"
    assert "2048" in desc


@pytest.mark.parametrize("prompt_tokens", [2048, 5000])
@pytest.mark.parametrize("requested", [0, 1])
def test_prompt_filling_the_context(prompt_tokens: int, requested: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_max_tokens(requested, prompt_tokens=prompt_tokens, **LIMITS)
    [(field, desc)] = info.value.violations
    assert field == "prompt"
    assert str(prompt_tokens) in desc


# --- engine_sampling -------------------------------------------------------------------------


def sampling(**overrides: Any) -> Sampling:
    base: dict[str, Any] = {
        "max_tokens": 0,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 123,
        "repetition_penalty": 1.1,
        "stop": (),
    }
    base.update(overrides)
    return Sampling(**base)


def test_engine_sampling_passes_values_through() -> None:
    assert engine_sampling(sampling()) == EngineSampling(
        temperature=0.7, runtime_top_k=40, runtime_top_p=0.9, seed=123, repetition_penalty=1.1
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"temperature": 0.0},
        {"temperature": -0.0},
        {"temperature": 1e-45},
        {"temperature": 5e-324},
        {"temperature": 9.99e-6},
        {"top_k": 1},
    ],
)
def test_greedy_is_runtime_top_k_1(overrides: dict[str, Any]) -> None:
    e = engine_sampling(sampling(**overrides))
    assert e.runtime_top_k == 1
    # Never temperature 0 on the engine side (TensorRT-LLM's greedy is top_k = 1).
    assert e.temperature > 0
    assert e.seed == 123
    assert e.repetition_penalty == 1.1


def test_temperature_from_1e_5_is_sampled() -> None:
    # vLLM's _SAMPLING_EPS: 1e-5 and above is a temperature, below it greedy.
    e = engine_sampling(sampling(temperature=2e-5))
    assert (e.temperature, e.runtime_top_k) == (2e-5, 40)


def test_repetition_penalty_message_names_the_bound() -> None:
    [(field, desc)] = violations(generate(sampling={"repetition_penalty": 1e-45}))
    assert field == "sampling.repetition_penalty"
    assert "[0.01, 2]" in desc


def test_engine_sampling_defaults_are_off() -> None:
    plan = validate_generate(generate())
    e = engine_sampling(plan.sampling)
    assert (e.temperature, e.runtime_top_k, e.runtime_top_p) == (1.0, 0, 1.0)
    assert e.seed == plan.sampling.seed
    assert (e.frequency_penalty, e.presence_penalty, e.return_log_probs) == (0.0, 0.0, False)


@pytest.mark.parametrize("greedy", [False, True])
def test_engine_sampling_carries_penalties_and_logprobs(greedy: bool) -> None:
    extra = {"frequency_penalty": -0.5, "presence_penalty": 1.5, "logprobs": True}
    e = engine_sampling(sampling(**extra, **({"top_k": 1} if greedy else {})))
    assert (e.frequency_penalty, e.presence_penalty, e.return_log_probs) == (-0.5, 1.5, True)
    assert e.runtime_top_k == (1 if greedy else 40)


def test_plan_sampling_new_fields_default_off() -> None:
    # The lead's HTTP layer builds Sampling without them: the defaults are the neutral values.
    s = sampling()
    assert (s.frequency_penalty, s.presence_penalty, s.logprobs) == (0.0, 0.0, False)


# --- validate_count_tokens -------------------------------------------------------------------


def test_count_tokens_valid_prompt() -> None:
    got = validate_count_tokens(pb.CountTokensRequest(model="m", prompt="hi"))
    assert got.prompt == "hi"
    assert got.messages == ()


def test_count_tokens_valid_messages() -> None:
    req = pb.CountTokensRequest(model="m", messages=[pb.ChatMessage(role="user", content="hi")])
    assert validate_count_tokens(req).messages == (Message("user", "hi"),)


def test_count_tokens_violations_together() -> None:
    req = pb.CountTokensRequest(
        model="",
        prompt="p",
        messages=[pb.ChatMessage(role="system", content="s"), pb.ChatMessage(role="?")],
    )
    assert fields_of(req) == ["model", "prompt", "messages[1].role"]


def test_count_tokens_neither_prompt_nor_messages() -> None:
    assert fields_of(pb.CountTokensRequest(model="m")) == ["prompt"]


def test_count_tokens_prompt_too_long() -> None:
    req = pb.CountTokensRequest(model="m", prompt="a" * (MAX_PROMPT_BYTES + 1))
    assert fields_of(req) == ["prompt"]
