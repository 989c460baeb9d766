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
from typing import NamedTuple

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


class ModelControlError(RuntimeError):
    """Triton refused a model-repository call (load, unload, index); carries its gRPC code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class RepositoryEntry(NamedTuple):
    """One row of Triton's RepositoryIndex: a model version and its state (READY, UNAVAILABLE…)."""

    name: str
    version: str
    state: str
    reason: str


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
            # Several Triton replicas behind one DNS name (`dns:///triton-<sku>…:8001`, a
            # headless Service): spread requests over all of them, not the first address.
            ("grpc.lb_policy_name", "round_robin"),
            # Reconnect within a second after Triton restarts (gRPC's default backoff grows to
            # 120 s, during which every call would fail fast with UNAVAILABLE).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
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

    async def model_ready(self, name: str, *, version: str = "", timeout: float = 2.0) -> bool:
        """ModelReady; `version` "" = as Triton's version policy picks (the highest loaded)."""
        try:
            resp = await self._stub.ModelReady(
                service_pb2.ModelReadyRequest(name=name, version=version),
                timeout=timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError:
            return False
        return bool(resp.ready)

    # ---- model control (Triton started with --model-control-mode=explicit) -----------------
    # The "model-repository" protocol group is restricted (engine_link.py): these calls need the
    # link metadata like inference does. Request shapes: Triton's grpc_service.proto
    # (RepositoryModelLoad/Unload/Index) and the model_repository protocol extension, where the
    # `config` parameter is a JSON ModelConfig that replaces config.pbtxt for this load.

    async def load_model(
        self, name: str, *, config_json: str | None = None, timeout: float = 600.0
    ) -> None:
        """Load (or reload) `name`; returns once Triton has finished loading it."""
        req = service_pb2.RepositoryModelLoadRequest(model_name=name)
        if config_json is not None:
            req.parameters["config"].string_param = config_json
        await self._control(self._stub.RepositoryModelLoad, req, timeout)

    async def unload_model(self, name: str, *, timeout: float = 120.0) -> None:
        req = service_pb2.RepositoryModelUnloadRequest(model_name=name)
        await self._control(self._stub.RepositoryModelUnload, req, timeout)

    async def repository_index(
        self, *, ready_only: bool = False, timeout: float = 10.0
    ) -> list[RepositoryEntry]:
        req = service_pb2.RepositoryIndexRequest(ready=ready_only)
        resp = await self._control(self._stub.RepositoryIndex, req, timeout)
        return [RepositoryEntry(m.name, m.version, m.state, m.reason) for m in resp.models]

    async def _control(self, method, request, timeout: float):  # type: ignore[no-untyped-def]
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise ModelControlError(
                f"{type(request).__name__.removesuffix('Request')} "
                f"{getattr(request, 'model_name', '') or ''}: {exc.code().name}: {exc.details()}",
                exc.code(),
            ) from None

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
