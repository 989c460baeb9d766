"""model_limits: which source's limit wins, the operator's overrides, every end-of-sequence id."""

from __future__ import annotations

import re
from typing import Any

import pytest

from autoglm.server.model_limits import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_TOKENS,
    EngineLimits,
    LimitError,
    ModelLimits,
    Overrides,
    Stated,
    end_of_sequence_ids,
    resolve_limits,
    stated_context,
    stated_default_max_tokens,
)

LLAMA_31 = {"max_position_embeddings": 131072, "eos_token_id": [128001, 128008, 128009]}


def limits(
    config: dict[str, Any],
    generation: dict[str, Any] | None = None,
    engine: EngineLimits | None = None,
    **overrides: int,
) -> ModelLimits:
    return resolve_limits(
        stated_context(config, generation, engine),
        engine=engine,
        default_max_tokens=stated_default_max_tokens(generation),
        overrides=Overrides(**overrides),
    )


# --- the context -------------------------------------------------------------------------------


def test_smollm2_states_8192() -> None:
    assert limits({"max_position_embeddings": 8192}) == ModelLimits(
        max_context=8192, max_input=8192, max_output=DEFAULT_MAX_OUTPUT, default_max_tokens=256
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"seq_length": 131072}, 131072),  # ChatGLM (glm-4-9b-chat)
        ({"n_positions": 1024}, 1024),  # GPT-2
        # GLM-4.1V (Glm4vConfig): the text model's length under text_config
        ({"text_config": {"max_position_embeddings": 65536}, "vision_config": {}}, 65536),
        # Several statements: the smallest, wherever it is.
        ({"max_position_embeddings": 32768, "seq_length": 8192}, 8192),
        ({"max_position_embeddings": 32768, "text_config": {"seq_length": 4096}}, 4096),
    ],
)
def test_the_smallest_statement_of_the_config(config: dict[str, Any], expected: int) -> None:
    assert limits(config).max_context == expected


def test_generation_config_max_length_bounds_the_context() -> None:
    # glm-4-9b-chat: seq_length 131072, generation_config max_length 128000
    got = limits({"seq_length": 131072}, {"max_length": 128000})
    assert got.max_context == 128000


def test_the_engine_bounds_context_and_prompt() -> None:
    built = EngineLimits(max_input_len=1024, max_seq_len=2048)
    got = limits({"max_position_embeddings": 8192}, engine=built)
    assert (got.max_context, got.max_input, got.max_output) == (2048, 1024, 2047)


def test_an_engine_built_longer_than_the_model_is_bounded_by_the_model() -> None:
    built = EngineLimits(max_input_len=16384, max_seq_len=32768)
    got = limits({"max_position_embeddings": 8192}, engine=built)
    assert (got.max_context, got.max_input) == (8192, 8192)


def test_no_statement_is_refused_naming_the_keys() -> None:
    with pytest.raises(LimitError, match="max_context_tokens") as info:
        limits({"hidden_size": 576})
    assert "max_position_embeddings" in str(info.value)
    assert "seq_length" in str(info.value)


def test_no_statement_with_an_operator_context() -> None:
    assert limits({}, max_context_tokens=4096).max_context == 4096


@pytest.mark.parametrize("value", ["8192", 8192.0, 0, -1, True])
def test_a_malformed_statement_is_refused_naming_it(value: object) -> None:
    with pytest.raises(
        LimitError, match=re.escape("config.json text_config.max_position_embeddings")
    ):
        limits({"text_config": {"max_position_embeddings": value}})


def test_a_null_statement_is_no_statement() -> None:
    assert limits({"max_position_embeddings": None, "seq_length": 2048}).max_context == 2048


# --- output and default ----------------------------------------------------------------------


def test_the_output_cap_is_within_the_room_the_context_leaves() -> None:
    got = limits({"max_position_embeddings": 2048})
    assert (got.max_output, got.default_max_tokens) == (2047, DEFAULT_MAX_TOKENS)
    tiny = limits({"max_position_embeddings": 100})
    assert (tiny.max_output, tiny.default_max_tokens) == (99, 99)


def test_generation_config_max_new_tokens_is_the_default_not_a_cap() -> None:
    got = limits({"max_position_embeddings": 8192}, {"max_new_tokens": 512})
    assert (got.max_output, got.default_max_tokens) == (DEFAULT_MAX_OUTPUT, 512)
    # A default above the cap is cut to it.
    big = limits({"max_position_embeddings": 8192}, {"max_new_tokens": 6000})
    assert big.default_max_tokens == DEFAULT_MAX_OUTPUT


# --- overrides -------------------------------------------------------------------------------


def test_overrides_lower_every_limit() -> None:
    got = limits(
        {"max_position_embeddings": 65536},
        max_context_tokens=25480,  # AutoGLM-Phone-9B as its authors serve it (issue #22)
        max_output_tokens=3000,
        default_max_tokens=100,
    )
    assert got == ModelLimits(25480, 25480, 3000, 100)


def test_an_override_may_raise_the_output_cap_up_to_the_context() -> None:
    assert limits({"max_position_embeddings": 8192}, max_output_tokens=8191).max_output == 8191


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"max_context_tokens": 8193},
            "max_context_tokens: 8193 is above 8192, the limit of config.json"
            " max_position_embeddings",
        ),
        ({"max_output_tokens": 8192}, "max_output_tokens: 8192 is above 8191"),
        ({"default_max_tokens": 4097}, "default_max_tokens: 4097 is above 4096"),
        ({"max_context_tokens": 1}, "max_context_tokens: 1 must be an integer >= 2"),
        ({"max_output_tokens": 0}, "max_output_tokens: 0 must be an integer >= 1"),
    ],
)
def test_an_override_above_the_models_limit_is_refused(
    overrides: dict[str, int], message: str
) -> None:
    with pytest.raises(LimitError) as info:
        limits({"max_position_embeddings": 8192}, **overrides)
    assert message in str(info.value)


def test_an_override_above_the_engine_names_the_manifest() -> None:
    built = EngineLimits(max_input_len=1024, max_seq_len=2048, source="version 3 manifest")
    with pytest.raises(LimitError, match="above 2048, the limit of version 3 manifest max_seq_len"):
        limits({"max_position_embeddings": 8192}, engine=built, max_context_tokens=4096)


def test_an_operator_context_below_the_engine_input_limit_bounds_the_prompt_too() -> None:
    built = EngineLimits(max_input_len=1024, max_seq_len=2048)
    got = limits({"max_position_embeddings": 8192}, engine=built, max_context_tokens=512)
    assert (got.max_context, got.max_input) == (512, 512)


def test_resolve_limits_takes_the_smallest_statement() -> None:
    context = [Stated(8192, "a"), Stated(2048, "b"), Stated(4096, "c")]
    assert resolve_limits(context).max_context == 2048


# --- end-of-sequence ids ---------------------------------------------------------------------


def test_llama_31_every_id_in_order() -> None:
    ids = end_of_sequence_ids({"eos_token_id": 128001}, {"eos_token_id": [128001, 128008, 128009]})
    assert ids == (128001, 128008, 128009)


def test_generation_config_first_then_config_each_once() -> None:
    assert end_of_sequence_ids({"eos_token_id": [7, 2]}, {"eos_token_id": [2, 11]}) == (2, 11, 7)


def test_config_alone_and_text_config() -> None:
    assert end_of_sequence_ids({"eos_token_id": 2}, None) == (2,)
    glm4v = {"text_config": {"eos_token_id": [151329, 151336, 151338]}}
    assert end_of_sequence_ids(glm4v, {}) == (151329, 151336, 151338)


@pytest.mark.parametrize(
    ("config", "generation"),
    [({}, None), ({"eos_token_id": None}, {"eos_token_id": []}), ({"bos_token_id": 1}, {})],
)
def test_no_id_is_refused(config: dict[str, Any], generation: dict[str, Any] | None) -> None:
    with pytest.raises(LimitError, match="eos_token_id"):
        end_of_sequence_ids(config, generation)


@pytest.mark.parametrize("bad", ["2", 2.0, -1, True, [2, "3"], [None]])
def test_a_malformed_id_is_refused_naming_its_file(bad: object) -> None:
    with pytest.raises(LimitError, match=re.escape("generation_config.json eos_token_id")):
        end_of_sequence_ids({"eos_token_id": 2}, {"eos_token_id": bad})
