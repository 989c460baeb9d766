"""The engine tensor contract: TensorRT-LLM's stop-word list layout and tensor dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from autoglm.triton_models import contract
from autoglm.triton_models.contract import TensorSpec, from_stop_words_list, to_stop_words_list


def test_known_layout_from_tensorrt_llm() -> None:
    # TensorRT-LLM `to_word_list_format` (preprocessing model): [[1,2,3],[4,5]] becomes
    # ids [1,2,3,4,5] and offsets [3,5] padded with -1 to the ids' length.
    arr = to_stop_words_list([[1, 2, 3], [4, 5]])
    assert arr.dtype == np.int32
    assert arr.shape == (2, 5)
    assert arr.tolist() == [[1, 2, 3, 4, 5], [3, 5, -1, -1, -1]]


def test_single_word() -> None:
    arr = to_stop_words_list([[42]])
    assert arr.tolist() == [[42], [1]]
    assert from_stop_words_list(arr) == [[42]]


def test_many_single_token_words_pad_the_ids_row() -> None:
    # More offsets than ids cannot happen (each word has >= 1 id), so width is len(ids).
    arr = to_stop_words_list([[7], [8], [9]])
    assert arr.tolist() == [[7, 8, 9], [1, 2, 3]]


def test_empty_words_are_skipped() -> None:
    arr = to_stop_words_list([[], [1, 2], [], [3], []])
    assert arr.tolist() == [[1, 2, 3], [2, 3, -1]]
    assert from_stop_words_list(arr) == [[1, 2], [3]]


@pytest.mark.parametrize("words", [[], [[]], [[], []]])
def test_no_words_gives_a_minimal_padded_list(words: list[list[int]]) -> None:
    arr = to_stop_words_list(words)
    assert arr.shape == (2, 1)
    assert arr.tolist() == [[-1], [-1]]
    assert from_stop_words_list(arr) == []


@pytest.mark.parametrize(
    "words",
    [
        [[1]],
        [[1, 2, 3], [4, 5]],
        [[0]],
        [[49151, 0, 2], [2], [17, 17, 17, 17]],
        [[i] * (i + 1) for i in range(8)],
        [[2, 2], [2, 2]],  # duplicates are kept
    ],
)
def test_round_trip(words: list[list[int]]) -> None:
    arr = to_stop_words_list(words)
    total = sum(len(w) for w in words)
    assert arr.shape == (2, total)
    assert arr.dtype == np.int32
    # Row 1: cumulative end offsets, then -1 padding.
    ends = np.cumsum([len(w) for w in words]).tolist()
    assert arr[1].tolist() == ends + [-1] * (total - len(words))
    assert from_stop_words_list(arr) == words


def test_decode_accepts_extra_padding() -> None:
    # Triton may pad a ragged batch wider than one request's list: trailing -1s are ignored.
    arr = np.array([[1, 2, 3, -1, -1, -1], [2, 3, -1, -1, -1, -1]], dtype=np.int32)
    assert from_stop_words_list(arr) == [[1, 2], [3]]


def test_decode_returns_python_ints() -> None:
    [[token]] = from_stop_words_list(to_stop_words_list([[5]]))
    assert type(token) is int


@pytest.mark.parametrize(
    ("data_type", "wire", "numpy_dtype"),
    [
        ("TYPE_INT32", "INT32", np.int32),
        ("TYPE_UINT64", "UINT64", np.uint64),
        ("TYPE_FP32", "FP32", np.float32),
        ("TYPE_BOOL", "BOOL", np.bool_),
    ],
)
def test_tensor_spec_dtypes(data_type: str, wire: str, numpy_dtype: type) -> None:
    spec = TensorSpec("t", data_type, (1,))
    assert spec.wire_dtype == wire
    assert spec.numpy_dtype == np.dtype(numpy_dtype)


def test_string_wire_dtype_is_bytes() -> None:
    assert TensorSpec("text_input", "TYPE_STRING", (-1,)).wire_dtype == "BYTES"


@pytest.mark.parametrize("spec", contract.INPUTS + contract.OUTPUTS, ids=lambda s: s.name)
def test_every_contract_tensor_has_a_numpy_dtype(spec: TensorSpec) -> None:
    assert spec.numpy_dtype.kind in "iufb"
    assert spec.wire_dtype == spec.data_type.removeprefix("TYPE_")


@pytest.mark.parametrize(
    ("spec", "wire", "dims", "optional"),
    [
        (contract.INPUT_IDS, "INT32", (-1,), True),
        (contract.INPUT_LENGTHS, "INT32", (1,), False),
        (contract.REQUEST_OUTPUT_LEN, "INT32", (1,), False),
        (contract.END_ID, "INT32", (1,), True),
        (contract.STREAMING, "BOOL", (1,), True),
        (contract.TEMPERATURE, "FP32", (1,), True),
        (contract.SEED, "UINT64", (1,), True),
        (contract.STOP_WORDS_LIST, "INT32", (2, -1), True),
        (contract.OUTPUT_IDS, "INT32", (-1, -1), False),
        (contract.SEQUENCE_LENGTH, "INT32", (-1,), False),
        (contract.FREQUENCY_PENALTY, "FP32", (1,), True),
        (contract.PRESENCE_PENALTY, "FP32", (1,), True),
        (contract.RETURN_LOG_PROBS, "BOOL", (1,), True),
        (contract.OUTPUT_LOG_PROBS, "FP32", (-1, -1), False),
    ],
    ids=lambda v: v.name if isinstance(v, TensorSpec) else None,
)
def test_contract_matches_tensorrt_llm(
    spec: TensorSpec, wire: str, dims: tuple[int, ...], optional: bool
) -> None:
    # TensorRT-LLM 1.2.1 tensorrt_llm/config.pbtxt (see contract.py's docstring).
    assert (spec.wire_dtype, spec.dims, spec.optional) == (wire, dims, optional)


def test_names_are_unique_and_indexed() -> None:
    assert len(contract.INPUTS_BY_NAME) == len(contract.INPUTS)
    assert len(contract.OUTPUTS_BY_NAME) == len(contract.OUTPUTS)
    assert not set(contract.INPUTS_BY_NAME) & set(contract.OUTPUTS_BY_NAME)
    assert contract.INPUTS_BY_NAME["seed"] is contract.SEED


# --- output_log_probs: the values of a response's new ids ---------------------------------------


def test_new_log_probs_of_an_engine_sending_the_new_values_only() -> None:
    assert contract.new_log_probs([-0.5], 1, seen=7) == [-0.5]
    assert contract.new_log_probs([-0.5, -1.0], 2, seen=0) == [-0.5, -1.0]


def test_new_log_probs_of_tensorrt_llm_s_growing_list() -> None:
    """TensorRT-LLM streams every value so far (LlmRequest::createResult): take the new ones."""
    stream = [[-0.1], [-0.1, -0.2], [-0.1, -0.2, -0.3, -0.4]]  # new ids: 1, 1, 2
    seen, got = 0, []
    for values, count in zip(stream, (1, 1, 2), strict=True):
        got += contract.new_log_probs(values, count, seen)
        seen += count
    assert got == [-0.1, -0.2, -0.3, -0.4]


def test_new_log_probs_without_new_ids() -> None:
    assert contract.new_log_probs([-0.1, -0.2], 0, seen=2) == []


@pytest.mark.parametrize(("values", "count", "seen"), [([], 1, 0), ([-0.1, -0.2], 1, 2)])
def test_new_log_probs_missing_values(values: list[float], count: int, seen: int) -> None:
    with pytest.raises(ValueError, match="output_log_probs"):
        contract.new_log_probs(values, count, seen)
