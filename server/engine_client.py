"""The façade's client of the engine model in Triton: one `ModelStreamInfer` stream per request.

Requests carry the TensorRT-LLM backend's tensors (contract.py) as raw little-endian bytes.
`triton_enable_empty_final_response` makes Triton close every request with an explicit final
response (tritonclient's aio `stream_infer` ignores that flag, so the raw generated stub is used,
facts.md). Leaving the stream — normally, by a stop string, or by the caller's cancellation —
cancels the gRPC call, which makes Triton cancel the request in the engine model.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from autoglm.server import tracing
from autoglm.server.errors import DeadlineExceeded, EngineFailure, EngineUnavailable
from autoglm.server.validation import EngineSampling
from autoglm.triton_models import contract

_FINAL = "triton_final_response"


@dataclass(frozen=True, slots=True)
class EngineRequest:
    triton_model: str
    request_id: str
    input_ids: Sequence[int]
    max_new_tokens: int
    end_id: int
    pad_id: int
    sampling: EngineSampling
    stop_words: Sequence[Sequence[int]] = ()


def _add(req: service_pb2.ModelInferRequest, spec: contract.TensorSpec, value: np.ndarray) -> None:
    arr = np.ascontiguousarray(value, dtype=spec.numpy_dtype)
    tensor = req.inputs.add()
    tensor.name = spec.name
    tensor.datatype = spec.wire_dtype
    tensor.shape.extend(arr.shape)
    req.raw_input_contents.append(arr.tobytes())


def build_infer_request(r: EngineRequest) -> service_pb2.ModelInferRequest:
    """The ModelInferRequest for one generation (batch 1, streaming, input excluded)."""
    req = service_pb2.ModelInferRequest(model_name=r.triton_model, id=r.request_id)
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    s = r.sampling

    def scalar(spec: contract.TensorSpec, v: float | int | bool) -> None:
        _add(req, spec, np.array([[v]]))  # [batch, 1]

    _add(req, contract.INPUT_IDS, np.array([list(r.input_ids)]))  # [batch, tokens]
    scalar(contract.INPUT_LENGTHS, len(r.input_ids))
    scalar(contract.REQUEST_OUTPUT_LEN, r.max_new_tokens)
    scalar(contract.END_ID, r.end_id)
    scalar(contract.PAD_ID, r.pad_id)
    scalar(contract.STREAMING, True)
    scalar(contract.EXCLUDE_INPUT_IN_OUTPUT, True)
    scalar(contract.TEMPERATURE, s.temperature)
    scalar(contract.RUNTIME_TOP_K, s.runtime_top_k)
    scalar(contract.RUNTIME_TOP_P, s.runtime_top_p)
    scalar(contract.SEED, s.seed)
    scalar(contract.REPETITION_PENALTY, s.repetition_penalty)
    if r.stop_words:
        words = contract.to_stop_words_list([list(w) for w in r.stop_words])
        _add(req, contract.STOP_WORDS_LIST, words[np.newaxis])  # [batch, 2, n]
    return req


def parse_stream_response(resp: service_pb2.ModelStreamInferResponse) -> tuple[list[int], bool]:
    """(new token ids, is final) of one streamed response; EngineFailure on an error."""
    if resp.error_message:
        raise EngineFailure(resp.error_message)
    infer = resp.infer_response
    final = infer.parameters[_FINAL].bool_param if _FINAL in infer.parameters else False
    for i, out in enumerate(infer.outputs):
        if out.name == contract.OUTPUT_IDS.name:
            # [batch, beam, tokens]; beam width is 1, so every id is a new token.
            ids = np.frombuffer(infer.raw_output_contents[i], dtype=np.int32)
            return ids.tolist(), final
    return [], final


class EngineClient:
    """Talks to one Triton endpoint; share one instance (and its channel) per process."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        options = [
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ]
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = tuple(metadata)
        self.target = target

    async def close(self) -> None:
        await self._channel.close()

    async def model_ready(self, name: str, *, timeout: float = 2.0) -> bool:
        try:
            resp = await self._stub.ModelReady(
                service_pb2.ModelReadyRequest(name=name), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError:
            return False
        return bool(resp.ready)

    async def generate(
        self, request: EngineRequest, *, timeout: float | None = None
    ) -> AsyncIterator[list[int]]:
        """Yield lists of new token ids as the engine streams them.

        Use with `contextlib.aclosing` so that leaving early cancels the engine request at once.
        """
        with tracing.engine_span(request.triton_model):
            # Triton continues this trace: its InferRequest → model → compute spans become
            # children of the engine span (Triton started with --trace-config mode=opentelemetry).
            metadata = (*self._metadata, *tracing.inject_traceparent())
            # aclosing: closing this generator must cancel the call now, not at GC time.
            async with contextlib.aclosing(self._stream(request, metadata, timeout)) as stream:
                async for ids in stream:
                    yield ids

    async def _stream(
        self, request: EngineRequest, metadata: Sequence[tuple[str, str]], timeout: float | None
    ) -> AsyncIterator[list[int]]:
        call = self._stub.ModelStreamInfer(metadata=metadata, timeout=timeout)
        try:
            await call.write(build_infer_request(request))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EngineUnavailable(
                        "the engine closed the stream before the final response"
                    )
                ids, final = parse_stream_response(resp)
                if ids:
                    yield ids
                if final:
                    return
        except grpc.aio.AioRpcError as exc:
            raise _map_rpc_error(exc) from None
        finally:
            # Ends our side at once; on an unfinished request Triton sees the cancellation.
            with contextlib.suppress(Exception):
                call.cancel()


def _map_rpc_error(exc: grpc.aio.AioRpcError) -> Exception:
    code = exc.code()
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    ):
        return EngineUnavailable(f"engine unavailable: {exc.details()}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("deadline exceeded while waiting for the engine")
    return EngineFailure(f"{code.name}: {exc.details()}")
