"""Reading `output_log_probs` from the engine's stream responses: only for a request that asked,
aligned with the new ids whether the engine sends the new values only or, as TensorRT-LLM does,
every value so far (contract.OUTPUT_LOG_PROBS).

Responses are built as Triton encodes them (raw little-endian contents, [batch, beam, n] shapes)
and, for the stream, carried by reader.py from the scripted HTTP/2 peer of test_reader.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from autoglm.server.engine import reader
from autoglm.server.engine.client import (
    EngineRequest,
    EngineSampling,
    _call,
    parse_log_probs,
    parse_stream_response,
)
from autoglm.server.errors import EngineFailure
from autoglm.triton_models import contract
from tests.server.engine.test_reader import Peer, answer, endpoint_for


def response(
    ids: list[int], log_probs: list[float] | None = None, *, final: bool = False
) -> service_pb2.ModelStreamInferResponse:
    """One streamed response as Triton sends it: output_ids [1, 1, n] + sequence_length, and
    output_log_probs [1, 1, m] when given."""
    resp = service_pb2.ModelStreamInferResponse()
    infer = resp.infer_response
    infer.model_name = "m"
    tensors = [
        (contract.OUTPUT_IDS, np.asarray(ids, dtype=np.int32).reshape(1, 1, -1)),
        (contract.SEQUENCE_LENGTH, np.asarray([[len(ids)]], dtype=np.int32)),
    ]
    if log_probs is not None:
        values = np.asarray(log_probs, dtype=np.float32).reshape(1, 1, -1)
        tensors.append((contract.OUTPUT_LOG_PROBS, values))
    for spec, arr in tensors:
        out = infer.outputs.add()
        out.name, out.datatype = spec.name, spec.wire_dtype
        out.shape.extend(arr.shape)
        infer.raw_output_contents.append(arr.tobytes())
    infer.parameters["triton_final_response"].bool_param = final
    return resp


def final_response() -> service_pb2.ModelStreamInferResponse:
    resp = service_pb2.ModelStreamInferResponse()
    resp.infer_response.parameters["triton_final_response"].bool_param = True
    return resp


def f32(values: list[float]) -> list[float]:
    """The values as FP32 carries them."""
    return np.asarray(values, dtype=np.float32).tolist()


def test_the_new_values_of_one_response() -> None:
    assert parse_log_probs(response([7, 8], [-0.25, -1.5]), 2, seen=0) == [-0.25, -1.5]


def test_the_new_values_out_of_tensorrt_llm_s_growing_list() -> None:
    resp = response([9], [-0.25, -1.5, -3.0])  # two ids came before; the list holds all three
    assert parse_log_probs(resp, 1, seen=2) == [-3.0]


def test_ids_without_their_log_probs_are_an_engine_failure() -> None:
    with pytest.raises(EngineFailure, match="without their output_log_probs"):
        parse_log_probs(response([7]), 1, seen=0)
    with pytest.raises(EngineFailure, match="output_log_probs: 1 values for 2 new ids"):
        parse_log_probs(response([7, 8], [-0.5]), 2, seen=3)


def test_the_ids_are_read_as_before() -> None:
    assert parse_stream_response(response([7, 8], [-0.5, -0.25])) == ([7, 8], False)


def request(return_log_probs: bool) -> EngineRequest:
    return EngineRequest(
        triton_model="m",
        request_id="r",
        input_ids=[1, 2, 3],
        max_new_tokens=4,
        end_id=2,
        pad_id=2,
        sampling=EngineSampling(1.0, 1, 1.0, 0, 1.0, return_log_probs=return_log_probs),
    )


# TensorRT-LLM's stream for 4 tokens in 3 responses (1, 1, 2 ids): every value so far each time.
GROWING = [
    response([11], [-0.5]),
    response([12], [-0.5, -0.125]),
    response([13, 14], [-0.5, -0.125, -2.0, -0.0]),
    final_response(),
]
# An engine that sends the new ids' values only (the synthetic engine).
PER_RESPONSE = [
    response([11], [-0.5]),
    response([12], [-0.125]),
    response([13, 14], [-2.0, -0.0]),
    final_response(),
]


async def stream(
    responses: list[service_pb2.ModelStreamInferResponse], return_log_probs: bool
) -> tuple[list[list[int]], list[list[float]], list[str]]:
    """Run one call through reader.py against a peer answering with `responses`; what
    `on_ids` and `on_log_probs` received, and the order of the calls."""

    async def script(peer: Peer, sid: int, headers: object, body: bytes) -> None:
        answer(peer, sid, *(r.SerializeToString() for r in responses))

    peer = Peer(script)
    endpoint: reader.Endpoint = await endpoint_for(peer)
    ids: list[list[int]] = []
    log_probs: list[list[float]] = []
    order: list[str] = []

    def on_ids(new: list[int]) -> None:
        ids.append(new)
        order.append("ids")

    def on_log_probs(new: list[float]) -> None:
        log_probs.append(new)
        order.append("log_probs")

    try:
        await _call(
            endpoint,
            request(return_log_probs),
            on_ids,
            (),
            5.0,
            on_log_probs if return_log_probs else None,
        )
    finally:
        endpoint.close()
        await peer.stop()
    ((_, sent),) = peer.requests
    names = {t.name for t in service_pb2.ModelInferRequest.FromString(sent).inputs}
    assert ("return_log_probs" in names) == return_log_probs
    return ids, log_probs, order


@pytest.mark.parametrize("responses", [GROWING, PER_RESPONSE], ids=["growing", "per_response"])
async def test_a_stream_s_log_probs_align_with_its_ids(
    responses: list[service_pb2.ModelStreamInferResponse],
) -> None:
    ids, log_probs, order = await stream(responses, return_log_probs=True)
    assert ids == [[11], [12], [13, 14]]
    assert log_probs == [f32([-0.5]), f32([-0.125]), f32([-2.0, -0.0])]
    assert order == ["log_probs", "ids"] * 3  # each response's values before its ids


async def test_without_asking_the_log_probs_are_not_read() -> None:
    ids, log_probs, _ = await stream(GROWING, return_log_probs=False)
    assert ids == [[11], [12], [13, 14]]
    assert log_probs == []


async def test_an_engine_that_ignores_return_log_probs_fails_the_call() -> None:
    with pytest.raises(EngineFailure, match="without their output_log_probs"):
        await stream([response([11]), final_response()], return_log_probs=True)
