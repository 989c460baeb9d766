"""The façade's client of the engine model in Triton: one `ModelStreamInfer` call per request.

Inference and health.py's one-token probes are read by reader.py: every call to a Triton
endpoint goes on one HTTP/2 connection (over TCP with the engine link's mTLS, or over Triton's
unix socket), read in batches, round robin over the endpoints health.py judges healthy.
Readiness checks and model control use grpc.aio channels (routes.py).

Requests carry the TensorRT-LLM backend's tensors (contract.py) as raw little-endian bytes;
a model served on Triton's vLLM backend gets that contract's request instead (text_request.py,
`stream_text_into`), on the same reader.
`triton_enable_empty_final_response` makes Triton close every request with an explicit final
response (tritonclient's aio `stream_infer` ignores that flag, so the raw generated messages are
used, facts.md). Every call sends its one request and half-closes. A call that got its final
response ends on Triton's OK status, never by a cancel (Triton 2.51 can leak requests cancelled
just after their final response, and the model version then never unloads: reader.py). Leaving
an unfinished stream — by a stop string, an error or the caller's cancellation — resets its
HTTP/2 stream, which makes Triton cancel the request in the engine model.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2

from autoglm.server.engine import reader, replicas
from autoglm.server.engine.lora import LoraRequest, LoraTasks, add_lora_tensors
from autoglm.server.engine.routes import EngineRoutes
from autoglm.server.engine.stream_errors import stream_error
from autoglm.server.engine.text_request import (
    TextEngineRequest,
    TextStep,
    build_text_infer_request,
    parse_text_response,
)
from autoglm.server.errors import (
    DeadlineExceeded,
    EngineFailure,
    EngineUnavailable,
    InvalidArgument,
)
from autoglm.server.telemetry import tracing
from autoglm.triton_models import contract

_FINAL = "triton_final_response"


@dataclass(frozen=True, slots=True)
class EngineSampling:
    """Sampling values as the TensorRT-LLM backend's tensors take them.

    The last three default to their neutral value, and a neutral value is not sent at all
    (`build_infer_request`): a request without them is the same bytes as before they existed,
    for engines that do not know them.
    """

    temperature: float
    runtime_top_k: int
    runtime_top_p: float
    seed: int
    repetition_penalty: float
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    return_log_probs: bool = False


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
    lora: LoraRequest | None = None  # a LoRA adapter's task (and weights): lora.py
    model_version: str = ""  # "" = Triton's version policy; a canary routes explicitly (canary.py)


# struct codes of the contract's data types, packed little-endian ("<"), as Triton reads raw
# tensor contents. struct instead of numpy: building a request with numpy arrays (one per
# scalar) was ~9 % of the event loop's busy time per request in a py-spy profile of the façade;
# struct also refuses a value its type cannot hold instead of wrapping it.
_PACK = {"TYPE_INT32": "i", "TYPE_UINT64": "Q", "TYPE_FP32": "f", "TYPE_BOOL": "?"}


def _add(
    req: service_pb2.ModelInferRequest,
    spec: contract.TensorSpec,
    shape: tuple[int, ...],
    values: Sequence[int | float | bool],
) -> None:
    tensor = req.inputs.add()
    tensor.name = spec.name
    tensor.datatype = spec.wire_dtype
    tensor.shape.extend(shape)
    req.raw_input_contents.append(struct.pack(f"<{len(values)}{_PACK[spec.data_type]}", *values))


def build_infer_request(r: EngineRequest) -> service_pb2.ModelInferRequest:
    """The ModelInferRequest for one generation (batch 1, streaming, input excluded)."""
    req = service_pb2.ModelInferRequest(
        model_name=r.triton_model, model_version=r.model_version, id=r.request_id
    )
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    s = r.sampling
    _add(req, contract.INPUT_IDS, (1, len(r.input_ids)), r.input_ids)  # [batch, tokens]
    for spec, value in (  # each [batch, 1]
        (contract.INPUT_LENGTHS, len(r.input_ids)),
        (contract.REQUEST_OUTPUT_LEN, r.max_new_tokens),
        (contract.END_ID, r.end_id),
        (contract.PAD_ID, r.pad_id),
        (contract.STREAMING, True),
        (contract.EXCLUDE_INPUT_IN_OUTPUT, True),
        (contract.TEMPERATURE, s.temperature),
        (contract.RUNTIME_TOP_K, s.runtime_top_k),
        (contract.RUNTIME_TOP_P, s.runtime_top_p),
        (contract.SEED, s.seed),
        (contract.REPETITION_PENALTY, s.repetition_penalty),
    ):
        _add(req, spec, (1, 1), (value,))
    if r.stop_words:
        words = contract.to_stop_words_list([list(w) for w in r.stop_words])
        _add(req, contract.STOP_WORDS_LIST, (1, *words.shape), words.ravel().tolist())
    # Only when they differ from the neutral value (EngineSampling).
    if s.frequency_penalty:
        _add(req, contract.FREQUENCY_PENALTY, (1, 1), (s.frequency_penalty,))
    if s.presence_penalty:
        _add(req, contract.PRESENCE_PENALTY, (1, 1), (s.presence_penalty,))
    if s.return_log_probs:
        _add(req, contract.RETURN_LOG_PROBS, (1, 1), (True,))
    if r.lora is not None:
        add_lora_tensors(req, r.lora)
    return req


def parse_stream_response(resp: service_pb2.ModelStreamInferResponse) -> tuple[list[int], bool]:
    """(new token ids, is final) of one streamed response; EngineFailure on an error."""
    if resp.error_message:
        raise stream_error(resp.error_message)
    infer = resp.infer_response
    final = infer.parameters[_FINAL].bool_param if _FINAL in infer.parameters else False
    for i, out in enumerate(infer.outputs):
        if out.name == contract.OUTPUT_IDS.name:
            # [batch, beam, tokens]; beam width is 1, so every id is a new token.
            ids = np.frombuffer(infer.raw_output_contents[i], dtype=np.int32)
            return ids.tolist(), final
    return [], final


def parse_log_probs(
    resp: service_pb2.ModelStreamInferResponse, count: int, seen: int
) -> list[float]:
    """The log-probabilities of a response's `count` new ids, `seen` ids having come before
    (contract.new_log_probs: the engine may send every value so far, as TensorRT-LLM does).

    For a request that set `return_log_probs`; EngineFailure when the response has new ids but
    no `output_log_probs` for them (an engine that ignores the tensor).
    """
    infer = resp.infer_response
    for i, out in enumerate(infer.outputs):
        if out.name == contract.OUTPUT_LOG_PROBS.name:
            # [batch, beam, steps]; beam width is 1.
            values = np.frombuffer(infer.raw_output_contents[i], dtype=np.float32).tolist()
            try:
                return contract.new_log_probs(values, count, seen)
            except ValueError as exc:
                raise EngineFailure(f"engine response: {exc}") from None
    raise EngineFailure(f"engine response: {count} token ids without their output_log_probs")


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
    """Talks to Triton: one endpoint, or several replicas (replicas.py); share one per process.

    Inference goes round robin over the endpoints currently judged healthy (`use_endpoints`,
    driven by health.py), each read by its reader.Endpoint; readiness checks and model control
    go over grpc.aio channels (routes.py), one per endpoint where they must reach every replica.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        tls_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`credentials` (grpc.aio) and `ssl_context` (reader.py) are the same mTLS client side
        of the engine link (EngineLink.channel_credentials / ssl_context); neither for a
        unix-socket link."""
        if credentials is not None and ssl_context is None:
            raise ValueError(
                "ssl_context: a TLS engine link needs its client context for inference"
                " (EngineLink.ssl_context())"
            )
        self._routes = EngineRoutes(target, credentials=credentials, tls_name=tls_name)
        self.spec = self._routes.spec
        self.target = target
        self._metadata = tuple(metadata)
        self._ssl = ssl_context if credentials is not None else None
        self._tls_name = tls_name or self.spec.tls_name
        self._readers: dict[str, reader.Endpoint] = {}  # address -> its inference connections
        self._turn = itertools.count()
        # triton model -> monotonic time its engine last streamed tokens (evidence for health.py)
        self.last_token_at: dict[str, float] = {}
        # LoRA tasks whose weights this process has sent (lora.py: later requests omit them)
        self.lora_tasks = LoraTasks()

    # ---- endpoints (replicas; routes.py) ----------------------------------------------------

    async def endpoints(self) -> list[str]:
        """The endpoints to probe now: the target itself, or what the replica target resolves to."""
        return await self._routes.endpoints()

    @property
    def healthy_endpoints(self) -> tuple[str, ...]:
        return self._routes.healthy

    async def use_endpoints(
        self, healthy: Sequence[str], *, connect_timeout_s: float = 5.0, drain_s: float = 3600.0
    ) -> bool:
        """Route new calls over `healthy` only; True if that changed it (EngineRoutes.use)."""
        return await self._routes.use(healthy, connect_timeout_s=connect_timeout_s, drain_s=drain_s)

    async def forget_endpoints(self, keep: Sequence[str]) -> None:
        """Close the probe/control channels of endpoints that are gone (DNS no longer lists),
        and their inference connections once the calls on them have ended."""
        await self._routes.forget(keep)
        for address in [a for a in self._readers if a not in keep and a != self.target]:
            self._readers.pop(address).retire()

    async def close(self, finish_grace_s: float = 5.0) -> None:
        """Close the inference connections and the channels.

        Calls whose final response has arrived are first given up to `finish_grace_s` to end on
        Triton's status: closing would cancel them right after their final response, the
        pattern that leaks requests in Triton 2.51 (reader.py). Seen in CI: a client closed
        just after its last streams left the model version they ran on loaded for good.
        """
        finishing = [
            asyncio.ensure_future(endpoint.finished())
            for endpoint in self._readers.values()
            if endpoint.finishing_calls
        ]
        if finishing:
            await asyncio.wait(finishing, timeout=finish_grace_s)
            for waiter in finishing:
                waiter.cancel()
        for endpoint in self._readers.values():
            endpoint.close()
        self._readers.clear()
        await self._routes.close()

    async def _next_endpoint(self) -> reader.Endpoint:
        """The endpoint of the next inference call: round robin over the healthy ones (before
        health.py's first verdict on a replicated target: over what it resolves to)."""
        pool = self._routes.healthy or tuple(await self._routes.endpoints())
        if not pool:
            raise EngineUnavailable(f"engine unavailable: {self.target} resolves to no endpoint")
        address = pool[0] if len(pool) == 1 else pool[next(self._turn) % len(pool)]
        return self._endpoint_at(address)

    def _endpoint_at(self, address: str) -> reader.Endpoint:
        endpoint = self._readers.get(address)
        if endpoint is None:
            unix_path = replicas.unix_socket_path(address)
            # A unix socket has no host: "localhost" names it in `:authority` (as grpc does).
            hp = replicas.parse_target(address).hosts[0] if unix_path is None else None
            host = hp.host if hp else "localhost"
            endpoint = self._readers[address] = reader.Endpoint(
                host,
                hp.port if hp else 0,
                ssl_context=self._ssl,
                server_hostname=self._tls_name or host,
                metadata=self._metadata,
                unix_path=unix_path,
            )
        return endpoint

    async def probe(
        self, endpoint: str, request: EngineRequest | TextEngineRequest, *, timeout: float
    ) -> int:
        """Run `request` (meant: a one-token generation) on `endpoint` alone; tokens generated.

        Goes the way inference goes (reader.py), so a probe tests the path that serves
        traffic. Raises EngineUnavailable / EngineFailure / DeadlineExceeded
        like a real call.
        """
        count = 0
        if isinstance(request, TextEngineRequest):

            def on_message(payload: bytes) -> bool:
                nonlocal count
                step = parse_text_response(service_pb2.ModelStreamInferResponse.FromString(payload))
                count += step.new_tokens
                return step.final

            payload = build_text_infer_request(request).SerializeToString()
            await _send(self._endpoint_at(endpoint), payload, on_message, (), timeout)
            return count

        def add(ids: list[int]) -> None:
            nonlocal count
            count += len(ids)

        await _call(self._endpoint_at(endpoint), request, add, (), timeout)
        return count

    async def model_ready(
        self, name: str, *, version: str = "", timeout: float = 2.0, endpoint: str | None = None
    ) -> bool:
        """ModelReady (of `endpoint`, else of the data path); `version` "" = as Triton's
        version policy picks (the highest loaded)."""
        stub = self._routes.stub if endpoint is None else self._routes.endpoint_stub(endpoint)
        try:
            resp = await stub.ModelReady(
                service_pb2.ModelReadyRequest(name=name, version=version),
                timeout=timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError:
            return False
        return bool(resp.ready)

    async def model_config(
        self, name: str, *, timeout: float = 5.0
    ) -> model_config_pb2.ModelConfig:
        """The config Triton serves model `name` with (after any auto-complete)."""
        try:
            resp = await self._routes.stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=name), timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise EngineUnavailable(
                f"ModelConfig {name}: {exc.code().name}: {exc.details()}"
            ) from None
        return resp.config

    async def model_tensors(
        self, name: str, *, timeout: float = 5.0
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The inputs and outputs Triton declares for model `name` (name → ModelConfig data
        type name), from its ModelConfig (the served config, after any auto-complete)."""
        config = await self.model_config(name, timeout=timeout)
        types = model_config_pb2.DataType.Name
        return (
            {t.name: types(t.data_type) for t in config.input},
            {t.name: types(t.data_type) for t in config.output},
        )

    # ---- model control (Triton started with --model-control-mode=explicit) -----------------
    # The "model-repository" protocol group is restricted (link.py): these calls need the
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
        await self._control("RepositoryModelLoad", req, timeout)

    async def unload_model(self, name: str, *, timeout: float = 120.0) -> None:
        req = service_pb2.RepositoryModelUnloadRequest(model_name=name)
        await self._control("RepositoryModelUnload", req, timeout)

    async def repository_index(
        self, *, ready_only: bool = False, timeout: float = 10.0
    ) -> list[RepositoryEntry]:
        req = service_pb2.RepositoryIndexRequest(ready=ready_only)
        resp = await self._control("RepositoryIndex", req, timeout)
        return [RepositoryEntry(m.name, m.version, m.state, m.reason) for m in resp.models]

    async def _control(self, method: str, request, timeout: float):  # type: ignore[no-untyped-def]
        """Call `method` on every endpoint (each replica loads its own models); first answer."""
        results = []
        try:
            stubs = await self._routes.control_stubs()
            if not stubs:
                raise ModelControlError(f"{self.target}: resolves to no endpoint", None)
            for stub in stubs:
                call = getattr(stub, method)
                results.append(await call(request, timeout=timeout, metadata=self._metadata))
            return results[0]
        except grpc.aio.AioRpcError as exc:
            raise ModelControlError(
                f"{type(request).__name__.removesuffix('Request')} "
                f"{getattr(request, 'model_name', '') or ''}: {exc.code().name}: {exc.details()}",
                exc.code(),
            ) from None

    async def generate(
        self, request: EngineRequest, *, timeout: float | None = None
    ) -> AsyncIterator[list[int]]:
        """Yield lists of new token ids as the engine streams them: `stream_into` behind a queue.

        For callers that want an iterator (tests, tools); the relay uses `stream_into` itself.
        Use with `contextlib.aclosing` so that leaving early cancels the engine request at once.
        An engine error is raised after the tokens that arrived before it.
        """
        queue: asyncio.Queue[list[int] | None] = asyncio.Queue()
        task = asyncio.create_task(self.stream_into(request, queue.put_nowait, timeout=timeout))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (ids := await queue.get()) is not None:
                yield ids
            await task
        finally:
            task.cancel()

    async def stream_into(
        self,
        request: EngineRequest,
        on_ids: Callable[[list[int]], None],
        *,
        timeout: float | None = None,
        on_log_probs: Callable[[list[float]], None] | None = None,
    ) -> None:
        """Hand every response's new token ids to `on_ids` until the final response.

        The relay's reading loop (relay.py): one coroutine, no async-generator layer per token.
        Run it as a task; cancelling the task cancels the call, hence the engine request, at once.
        With `on_log_probs` (for a request whose sampling sets `return_log_probs`), the ids'
        log-probabilities go there first, one per id, then the ids to `on_ids`.
        """
        model, stamps = request.triton_model, self.last_token_at

        def push(ids: list[int]) -> None:
            stamps[model] = time.monotonic()  # evidence of health (health.py)
            on_ids(ids)

        with tracing.engine_span(model):
            endpoint = await self._next_endpoint()
            await _call(
                endpoint, request, push, tracing.inject_traceparent(), timeout, on_log_probs
            )

    async def stream_text_into(
        self,
        request: TextEngineRequest,
        on_step: Callable[[TextStep], None],
        *,
        timeout: float | None = None,
    ) -> None:
        """The vLLM contract's `stream_into` (text_request.py): every response to `on_step`
        until the final one. Cancelling the task cancels the call, hence the engine request."""
        model, stamps = request.triton_model, self.last_token_at

        def on_message(payload: bytes) -> bool:
            step = parse_text_response(service_pb2.ModelStreamInferResponse.FromString(payload))
            if step.new_tokens:
                stamps[model] = time.monotonic()  # evidence of health (health.py)
            on_step(step)
            return step.final

        with tracing.engine_span(model):
            endpoint = await self._next_endpoint()
            payload = build_text_infer_request(request).SerializeToString()
            await _send(endpoint, payload, on_message, tracing.inject_traceparent(), timeout)


async def _call(
    endpoint: reader.Endpoint,
    request: EngineRequest,
    on_ids: Callable[[list[int]], None],
    metadata: Sequence[tuple[str, str]],
    timeout: float | None,
    on_log_probs: Callable[[list[float]], None] | None = None,
) -> None:
    """One inference call on `endpoint`: each response's new ids to `on_ids` (and, with
    `on_log_probs`, their log-probabilities there first) until the final one; Triton's errors as
    the façade's (`_map_status`)."""

    if on_log_probs is None:

        def on_message(payload: bytes) -> bool:
            ids, final = parse_stream_response(
                service_pb2.ModelStreamInferResponse.FromString(payload)
            )
            if ids:
                on_ids(ids)
            return final

    else:  # a handler of its own: the one above stays as cheap as without log-probabilities
        seen = 0

        def on_message(payload: bytes) -> bool:
            nonlocal seen
            resp = service_pb2.ModelStreamInferResponse.FromString(payload)
            ids, final = parse_stream_response(resp)
            if ids:
                on_log_probs(parse_log_probs(resp, len(ids), seen))
                seen += len(ids)
                on_ids(ids)
            return final

    payload = build_infer_request(request).SerializeToString()
    await _send(endpoint, payload, on_message, metadata, timeout)


async def _send(
    endpoint: reader.Endpoint,
    payload: bytes,
    on_message: Callable[[bytes], bool],
    metadata: Sequence[tuple[str, str]],
    timeout: float | None,
) -> None:
    """One call of either contract: `on_message` per response until it says final."""
    try:
        await endpoint.call(payload, on_message, metadata=metadata, timeout=timeout)
    except reader.CallError as exc:
        raise _map_status(exc.code, exc.details) from None


def _map_status(code: grpc.StatusCode, details: str | None) -> Exception:
    """A Triton call's gRPC status as the façade's error (mapped to the caller in errors.py)."""
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    ):
        return EngineUnavailable(f"engine unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("deadline exceeded while waiting for the engine")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The engine refused a value (its message names the tensor, triton_models/refusal.py):
        # the caller's error, not the server's; the pipeline names the request field.
        return InvalidArgument([("engine", f"refused the request: {details}")])
    return EngineFailure(f"{code.name}: {details}")
