"""The engine request's tensors, checked against tritonclient's own encoding of the same values
(InferInput.set_data_from_numpy): names, datatypes, shapes and raw bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc import InferInput

from autoglm.server.engine.client import EngineRequest, EngineSampling, build_infer_request
from autoglm.triton_models import contract


def _request(**kw: object) -> EngineRequest:
    base: dict[str, object] = {
        "triton_model": "m",
        "request_id": "r-1",
        "input_ids": [1, 2, 49151, 0],
        "max_new_tokens": 64,
        "end_id": 2,
        "pad_id": 2,
        "sampling": EngineSampling(0.7, 40, 0.9, 2**64 - 1, 1.1),
    }
    base.update(kw)
    return EngineRequest(**base)  # type: ignore[arg-type]


def _reference(r: EngineRequest) -> dict[str, tuple[str, list[int], bytes]]:
    s = r.sampling
    values: list[tuple[contract.TensorSpec, np.ndarray]] = [
        (contract.INPUT_IDS, np.array([list(r.input_ids)])),
        (contract.INPUT_LENGTHS, np.array([[len(r.input_ids)]])),
        (contract.REQUEST_OUTPUT_LEN, np.array([[r.max_new_tokens]])),
        (contract.END_ID, np.array([[r.end_id]])),
        (contract.PAD_ID, np.array([[r.pad_id]])),
        (contract.STREAMING, np.array([[True]])),
        (contract.EXCLUDE_INPUT_IN_OUTPUT, np.array([[True]])),
        (contract.TEMPERATURE, np.array([[s.temperature]])),
        (contract.RUNTIME_TOP_K, np.array([[s.runtime_top_k]])),
        (contract.RUNTIME_TOP_P, np.array([[s.runtime_top_p]])),
        (contract.SEED, np.array([[s.seed]], dtype=np.uint64)),
        (contract.REPETITION_PENALTY, np.array([[s.repetition_penalty]])),
    ]
    if r.stop_words:
        words = contract.to_stop_words_list([list(w) for w in r.stop_words])
        values.append((contract.STOP_WORDS_LIST, words[np.newaxis]))
    # Sent only when not neutral: a request without them is the bytes it was before them.
    if s.frequency_penalty:
        values.append((contract.FREQUENCY_PENALTY, np.array([[s.frequency_penalty]])))
    if s.presence_penalty:
        values.append((contract.PRESENCE_PENALTY, np.array([[s.presence_penalty]])))
    if s.return_log_probs:
        values.append((contract.RETURN_LOG_PROBS, np.array([[True]])))
    out = {}
    for spec, arr in values:
        arr = arr.astype(spec.numpy_dtype)
        inp = InferInput(spec.name, list(arr.shape), spec.wire_dtype)
        inp.set_data_from_numpy(arr)
        out[spec.name] = (spec.wire_dtype, list(arr.shape), inp._get_content())
    return out


@pytest.mark.parametrize(
    ("stop_words", "sampling"),
    [
        ((), EngineSampling(0.7, 40, 0.9, 2**64 - 1, 1.1)),
        (((5, 6), (7,)), EngineSampling(0.7, 40, 0.9, 2**64 - 1, 1.1)),
        ((), EngineSampling(1.0, 1, 1.0, 3, 1.0, frequency_penalty=-2.0)),
        ((), EngineSampling(1.0, 1, 1.0, 3, 1.0, presence_penalty=0.25)),
        ((), EngineSampling(1.0, 1, 1.0, 3, 1.0, return_log_probs=True)),
        (((9,),), EngineSampling(0.5, 0, 0.5, 0, 1.2, 1.5, -0.5, True)),
    ],
    ids=["plain", "stop_words", "frequency", "presence", "log_probs", "all"],
)
def test_tensors_match_tritonclient_encoding(
    stop_words: tuple[tuple[int, ...], ...], sampling: EngineSampling
) -> None:
    r = _request(stop_words=stop_words, sampling=sampling)
    req = build_infer_request(r)
    got = {
        t.name: (t.datatype, list(t.shape), req.raw_input_contents[i])
        for i, t in enumerate(req.inputs)
    }
    assert got == _reference(r)
    assert req.model_name == "m" and req.id == "r-1"
    assert req.parameters["triton_enable_empty_final_response"].bool_param


def test_a_value_its_type_cannot_hold_is_refused_not_wrapped() -> None:
    with pytest.raises(struct.error, match="format requires"):
        build_infer_request(_request(input_ids=[2**31]))


def test_neutral_new_values_leave_the_request_as_it_was() -> None:
    """Defaults (0, 0, False) and explicit neutral values give the bytes of a request that
    predates them: the hot path and older engine configs see nothing new."""
    before = build_infer_request(_request(sampling=EngineSampling(0.7, 40, 0.9, 7, 1.1)))
    neutral = EngineSampling(0.7, 40, 0.9, 7, 1.1, frequency_penalty=0.0, presence_penalty=-0.0)
    after = build_infer_request(_request(sampling=neutral))
    assert after.SerializeToString() == before.SerializeToString()
    names = {t.name for t in after.inputs}
    assert not names & {"frequency_penalty", "presence_penalty", "return_log_probs"}
