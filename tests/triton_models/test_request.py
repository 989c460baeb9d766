"""parse_request: the CPU engine reads the TensorRT-LLM tensors exactly as Triton delivers them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from autoglm.triton_models import contract
from autoglm.triton_models.contract import to_stop_words_list
from autoglm.triton_models.cpu_engine.request import (
    EngineRequest,
    RequestError,
    parse_max_input_len,
    parse_request,
)
from autoglm.triton_models.cpu_engine.sampling import SamplingConfig
from autoglm.triton_models.refusal import Refusal, parse_refusal

VOCAB = 49152
PROMPT = [504, 3575, 282, 4649, 314]


def scalar(name: str, value: Any, shape: tuple[int, ...] = (1,)) -> np.ndarray:
    """A per-request scalar with its contract dtype: [1] after the config's reshape to [],
    or [1, 1] without it (batch dim + dims [1])."""
    return np.full(shape, value, dtype=contract.INPUTS_BY_NAME[name].numpy_dtype)


def ids(tokens: list[int]) -> np.ndarray:
    return np.array([tokens], dtype=np.int32)  # [batch=1, tokens]


def minimal() -> dict[str, np.ndarray]:
    return {
        "input_ids": ids(PROMPT),
        "input_lengths": scalar("input_lengths", len(PROMPT)),
        "request_output_len": scalar("request_output_len", 16),
    }


def complete(shape: tuple[int, ...] = (1,)) -> dict[str, np.ndarray]:
    words = to_stop_words_list([[198, 198], [2]])  # [2, n]
    return {
        "input_ids": ids(PROMPT),
        "input_lengths": scalar("input_lengths", len(PROMPT), shape),
        "request_output_len": scalar("request_output_len", 32, shape),
        "end_id": scalar("end_id", 2, shape),
        "pad_id": scalar("pad_id", 2, shape),
        "streaming": scalar("streaming", True, shape),
        "exclude_input_in_output": scalar("exclude_input_in_output", True, shape),
        "temperature": scalar("temperature", 0.7, shape),
        "runtime_top_k": scalar("runtime_top_k", 40, shape),
        "runtime_top_p": scalar("runtime_top_p", 0.9, shape),
        "seed": scalar("seed", 2**64 - 1, shape),
        "repetition_penalty": scalar("repetition_penalty", 1.1, shape),
        "stop_words_list": words[np.newaxis],  # [batch=1, 2, n]
        "frequency_penalty": scalar("frequency_penalty", 0.5, shape),
        "presence_penalty": scalar("presence_penalty", -1.5, shape),
        "return_log_probs": scalar("return_log_probs", True, shape),
    }


def parse(tensors: dict[str, np.ndarray]) -> EngineRequest:
    return parse_request(tensors, vocab_size=VOCAB)


def error_of(tensors: dict[str, np.ndarray]) -> str:
    with pytest.raises(RequestError) as info:
        parse(tensors)
    return str(info.value)


@pytest.mark.parametrize("shape", [(1,), (1, 1)], ids=["reshaped", "batch_by_1"])
def test_complete_request(shape: tuple[int, ...]) -> None:
    req = parse(complete(shape))
    assert req.input_ids == tuple(PROMPT)
    assert all(type(t) is int for t in req.input_ids)
    assert req.max_new_tokens == 32
    assert req.end_id == 2
    assert req.streaming is True
    assert req.exclude_input_in_output is True
    assert req.stop_words == ((198, 198), (2,))
    s = req.sampling
    assert s.temperature == pytest.approx(0.7)
    assert s.top_k == 40
    assert s.top_p == pytest.approx(0.9)
    assert s.repetition_penalty == pytest.approx(1.1)
    assert s.seed == 2**64 - 1
    assert type(s.seed) is int
    assert s.frequency_penalty == 0.5
    assert s.presence_penalty == -1.5
    assert req.return_log_probs is True


def test_defaults_for_absent_optional_tensors() -> None:
    req = parse(minimal())
    assert req == EngineRequest(
        input_ids=tuple(PROMPT),
        max_new_tokens=16,
        end_id=None,
        streaming=False,
        exclude_input_in_output=False,
        sampling=SamplingConfig(),
        stop_words=(),
    )
    assert req.sampling.seed is None
    assert (req.sampling.frequency_penalty, req.sampling.presence_penalty) == (0.0, 0.0)
    assert req.return_log_probs is False


def test_input_lengths_shorter_than_padded_ids() -> None:
    # A ragged batch pads input_ids; only the first input_lengths ids are the prompt, and the
    # padding (here -1, outside the vocabulary) is not checked.
    tensors = minimal()
    tensors["input_ids"] = ids([*PROMPT, -1, -1])
    assert parse(tensors).input_ids == tuple(PROMPT)


def test_ids_at_vocab_edges() -> None:
    tensors = minimal()
    tensors["input_ids"] = ids([0, VOCAB - 1])
    tensors["input_lengths"] = scalar("input_lengths", 2)
    assert parse(tensors).input_ids == (0, VOCAB - 1)


# --- missing / malformed tensors, each named ---------------------------------------------------


def test_missing_input_ids() -> None:
    tensors = minimal()
    del tensors["input_ids"]
    assert "'input_ids'" in error_of(tensors)


@pytest.mark.parametrize("name", ["input_lengths", "request_output_len"])
def test_missing_required_scalar(name: str) -> None:
    tensors = minimal()
    del tensors[name]
    assert f"'{name}'" in error_of(tensors)


@pytest.mark.parametrize(
    "arr",
    [
        np.array(PROMPT, dtype=np.int32),  # [tokens]: no batch dim
        np.array([[PROMPT]], dtype=np.int32),  # [1, 1, tokens]
        np.array([PROMPT, PROMPT], dtype=np.int32),  # batch of 2
        np.zeros((0, 5), dtype=np.int32),
    ],
    ids=["1d", "3d", "batch2", "batch0"],
)
def test_input_ids_wrong_shape(arr: np.ndarray) -> None:
    tensors = minimal()
    tensors["input_ids"] = arr
    msg = error_of(tensors)
    assert "'input_ids'" in msg
    assert str(arr.shape) in msg


@pytest.mark.parametrize("length", [0, -1, len(PROMPT) + 1])
def test_input_lengths_out_of_range(length: int) -> None:
    tensors = minimal()
    tensors["input_lengths"] = scalar("input_lengths", length)
    assert "'input_lengths'" in error_of(tensors)


def test_empty_input_ids() -> None:
    tensors = minimal()
    tensors["input_ids"] = np.zeros((1, 0), dtype=np.int32)
    tensors["input_lengths"] = scalar("input_lengths", 0)
    assert "'input_lengths'" in error_of(tensors)


@pytest.mark.parametrize("name", ["input_lengths", "request_output_len", "end_id", "temperature"])
def test_scalar_with_more_than_one_value(name: str) -> None:
    tensors = complete()
    tensors[name] = np.concatenate([tensors[name], tensors[name]])  # [2]
    msg = error_of(tensors)
    assert f"'{name}'" in msg
    assert "(2,)" in msg


@pytest.mark.parametrize("bad", [-1, VOCAB, VOCAB + 1000])
def test_ids_outside_vocab(bad: int) -> None:
    tensors = minimal()
    tensors["input_ids"] = ids([*PROMPT[:2], bad])
    tensors["input_lengths"] = scalar("input_lengths", 3)
    msg = error_of(tensors)
    assert "'input_ids'" in msg
    assert str(VOCAB) in msg


@pytest.mark.parametrize("value", [0, -5])
def test_request_output_len_below_one(value: int) -> None:
    tensors = minimal()
    tensors["request_output_len"] = scalar("request_output_len", value)
    msg = error_of(tensors)
    assert "'request_output_len'" in msg
    assert str(value) in msg


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", -0.5),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", -math.inf),
        ("runtime_top_k", -1),
        ("runtime_top_k", -(2**31)),
        ("runtime_top_p", 1.5),
        ("runtime_top_p", -0.1),
        ("runtime_top_p", math.nan),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", 1e-45),  # a float32 denormal: logits / it overflow
        ("repetition_penalty", 0.0099),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", math.nan),
        ("repetition_penalty", math.inf),
        ("frequency_penalty", math.nan),
        ("frequency_penalty", math.inf),
        ("presence_penalty", -math.inf),
        ("presence_penalty", math.nan),
    ],
)
def test_bad_sampling_values_name_their_tensor(name: str, value: float) -> None:
    tensors = minimal()
    tensors[name] = scalar(name, value)
    with pytest.raises(RequestError) as info:
        parse(tensors)
    assert info.value.tensor == name
    assert str(info.value).startswith(f"invalid input tensor '{name}': ")


@pytest.mark.parametrize(
    "tensors",
    [
        {"input_ids": None},
        {"input_ids": np.array(PROMPT, dtype=np.int32)},
        {"input_lengths": scalar("input_lengths", 0)},
        {"request_output_len": scalar("request_output_len", -(2**31))},
        {"temperature": scalar("temperature", math.nan)},
        {"stop_words_list": np.full((1, 3, 2), -1, dtype=np.int32)},
    ],
)
def test_every_error_is_a_refusal_the_facade_can_read_back(
    tensors: dict[str, np.ndarray | None],
) -> None:
    request = {**minimal(), **tensors}
    with pytest.raises(Refusal) as info:
        parse({k: v for k, v in request.items() if v is not None})
    back = parse_refusal(f"generation failed: {info.value}")  # wherever it sits in the text
    assert back is not None
    assert (back.tensor, back.reason) == (info.value.tensor, info.value.reason)
    assert back.tensor == next(iter(tensors))


@pytest.mark.parametrize("value", [0.0, -0.0, 5e-324, 1e-45, 9.99e-6])
def test_near_zero_temperature_is_greedy(value: float) -> None:
    tensors = minimal()
    tensors["temperature"] = scalar("temperature", value)
    assert parse(tensors).sampling.is_greedy


def test_repetition_penalty_bound_as_fp32_carries_it() -> None:
    tensors = minimal()
    tensors["repetition_penalty"] = scalar("repetition_penalty", 0.01)  # 0.0099999998 in FP32
    assert parse(tensors).sampling.repetition_penalty == pytest.approx(0.01)


@pytest.mark.parametrize(
    "arr",
    [
        to_stop_words_list([[1, 2]]),  # [2, n]: no batch dim
        to_stop_words_list([[1, 2]])[np.newaxis, :1],  # [1, 1, n]
        np.full((1, 3, 2), -1, dtype=np.int32),  # [1, 3, n]
        np.full((2, 2, 2), -1, dtype=np.int32),  # batch of 2
        np.full((1, 2, 2, 1), -1, dtype=np.int32),  # 4-d
    ],
    ids=["2d", "one_row", "three_rows", "batch2", "4d"],
)
def test_stop_words_list_wrong_shape(arr: np.ndarray) -> None:
    tensors = minimal()
    tensors["stop_words_list"] = arr
    msg = error_of(tensors)
    assert "'stop_words_list'" in msg
    assert str(arr.shape) in msg


def test_stop_words_list_without_words() -> None:
    tensors = minimal()
    tensors["stop_words_list"] = to_stop_words_list([])[np.newaxis]
    assert parse(tensors).stop_words == ()


def test_greedy_sampling_is_accepted() -> None:
    tensors = minimal()
    tensors["temperature"] = scalar("temperature", 0.0)
    tensors["runtime_top_k"] = scalar("runtime_top_k", 1)
    assert parse(tensors).sampling.is_greedy


def test_seed_zero_is_a_seed() -> None:
    tensors = minimal()
    tensors["seed"] = scalar("seed", 0)
    assert parse(tensors).sampling.seed == 0


def test_false_flags() -> None:
    tensors = minimal()
    tensors["streaming"] = scalar("streaming", False)
    tensors["exclude_input_in_output"] = scalar("exclude_input_in_output", False)
    req = parse(tensors)
    assert req.streaming is False
    assert req.exclude_input_in_output is False


@pytest.mark.parametrize("value", [-3.4e38, -2.0, 0.0, 2.0, 3.4e38])
def test_any_finite_additive_penalty_is_accepted(value: float) -> None:
    # TensorRT-LLM's range is (-inf, +inf) (gpt-runtime.md); [-2, 2] is the façade's rule.
    tensors = minimal()
    tensors["frequency_penalty"] = scalar("frequency_penalty", value)
    tensors["presence_penalty"] = scalar("presence_penalty", value)
    sampling = parse(tensors).sampling
    assert sampling.frequency_penalty == pytest.approx(value)
    assert sampling.presence_penalty == pytest.approx(value)


def test_return_log_probs_false_is_false() -> None:
    tensors = minimal()
    tensors["return_log_probs"] = scalar("return_log_probs", False)
    assert parse(tensors).return_log_probs is False


# --- max_input_len: the engine's prompt limit, as a TensorRT-LLM build's -------------------------


def test_a_prompt_at_max_input_len_is_taken() -> None:
    req = parse_request(minimal(), vocab_size=VOCAB, max_input_len=len(PROMPT))
    assert req.input_ids == tuple(PROMPT)


def test_a_prompt_over_max_input_len_is_refused_naming_input_ids_and_the_numbers() -> None:
    with pytest.raises(RequestError) as info:
        parse_request(minimal(), vocab_size=VOCAB, max_input_len=len(PROMPT) - 1)
    assert info.value.tensor == "input_ids"
    assert f"{len(PROMPT)} tokens exceed" in info.value.reason
    assert f"max_input_len of {len(PROMPT) - 1}" in info.value.reason


def test_the_limit_counts_input_lengths_not_the_padded_tensor() -> None:
    tensors = minimal()
    tensors["input_ids"] = ids([*PROMPT, 0, 0, 0])  # padded: input_lengths says 5
    assert parse_request(tensors, vocab_size=VOCAB, max_input_len=len(PROMPT)).input_ids == tuple(
        PROMPT
    )


@pytest.mark.parametrize(("value", "limit"), [("", None), ("1", 1), ("1024", 1024)])
def test_parse_max_input_len(value: str, limit: int | None) -> None:
    assert parse_max_input_len(value) == limit


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "many"])
def test_a_bad_max_input_len_names_it(value: str) -> None:
    with pytest.raises(ValueError, match=r"^max_input_len: "):
        parse_max_input_len(value)
