"""LoRA on the token-id contract: the request tensors, and the resend when the engine forgot a task.

TensorRT-LLM's backend takes an adapter as three optional inputs
(triton_models/templates/tensorrt_llm/config.pbtxt, from TensorRT-LLM 1.2.1's
`inflight_batcher_llm/tensorrt_llm/config.pbtxt`): `lora_task_id` (UINT64 [1]) on every request
of the adapter, and `lora_weights` (FP16 [n, D×Hi + Ho×D]) with `lora_config` (INT32 [n, 3]) on
the first one of a task, after which the executor's LoRA cache holds them. "If the cache is full
the oldest LoRA will be evicted … An error is returned if `lora_task_id` is not cached" (same
file), and an engine restarted or another replica has never seen the task either.

So the façade sends the weights with the first request of a task in this process
(`LoraTasks`), only the task id afterwards, and when the engine answers that the task is not
cached it sends the same request once more, with the weights (`stream_with_lora`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from tritonclient.grpc import service_pb2

from autoglm.server.errors import EngineFailure
from autoglm.triton_models import contract
from autoglm.triton_models import lora_contract as lc

if TYPE_CHECKING:  # client.py imports this module
    from autoglm.server.engine.client import EngineClient, EngineRequest


def not_cached(message: str) -> bool:
    """Whether an engine error is the executor's "LoRA task <id> not found in cache" (its text
    and sources: triton_models/lora_contract.py)."""
    return lc.not_cached_task(message) is not None


@dataclass(frozen=True, slots=True)
class LoraRequest:
    """The adapter part of one engine request."""

    task_id: int
    # Both or neither: the converted arrays (adapters.py), sent with a task's first request.
    weights: np.ndarray | None = None
    config: np.ndarray | None = None

    @property
    def carries_weights(self) -> bool:
        return self.weights is not None


def add_lora_tensors(req: service_pb2.ModelInferRequest, lora: LoraRequest) -> None:
    """Append the LoRA inputs of `lora` to `req` (batch 1: every shape has a leading 1)."""
    _raw(req, lc.LORA_TASK_ID, (1, 1), np.array([lora.task_id], dtype="<u8").tobytes())
    if lora.weights is None or lora.config is None:
        return
    weights = np.ascontiguousarray(lora.weights, dtype="<f2")
    config = np.ascontiguousarray(lora.config, dtype="<i4")
    _raw(req, lc.LORA_WEIGHTS, (1, *weights.shape), weights.tobytes())
    _raw(req, lc.LORA_CONFIG, (1, *config.shape), config.tobytes())


def _raw(
    req: service_pb2.ModelInferRequest,
    spec: contract.TensorSpec,
    shape: tuple[int, ...],
    data: bytes,
) -> None:
    tensor = req.inputs.add()
    tensor.name = spec.name
    tensor.datatype = spec.wire_dtype
    tensor.shape.extend(shape)
    req.raw_input_contents.append(data)


class LoraTasks:
    """The (Triton model, task id) pairs this process has sent weights for, most recent last.

    Bounded: a pair forgotten here only costs one request that carries its weights again.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._sent: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._limit = limit

    def sent(self, model: str, task_id: int) -> bool:
        key = (model, task_id)
        if key in self._sent:
            self._sent.move_to_end(key)
            return True
        return False

    def mark_sent(self, model: str, task_id: int) -> None:
        self._sent[(model, task_id)] = None
        self._sent.move_to_end((model, task_id))
        while len(self._sent) > self._limit:
            self._sent.popitem(last=False)

    def forget(self, model: str, task_id: int) -> None:
        self._sent.pop((model, task_id), None)


ArraysOf = Callable[[], tuple[np.ndarray, np.ndarray]]


async def stream_with_lora(
    engine: EngineClient,
    request: EngineRequest,
    arrays: ArraysOf,
    on_ids: Callable[[list[int]], None],
    *,
    timeout: float | None,
    on_log_probs: Callable[[list[float]], None] | None = None,
) -> None:
    """`engine.stream_into` for a request whose `lora` names a task: with the weights when this
    process has not sent them for the task yet, and once more with them when the engine answers
    that the task is not cached (before any token: the engine refuses the request up front)."""
    lora = request.lora
    assert lora is not None
    tasks, model = engine.lora_tasks, request.triton_model
    with_weights = not tasks.sent(model, lora.task_id)
    got_ids = False

    def push(ids: list[int]) -> None:
        nonlocal got_ids
        if with_weights and not got_ids:
            tasks.mark_sent(model, lora.task_id)  # the engine has taken them
        got_ids = True
        on_ids(ids)

    async def run() -> None:
        sent = await _with_weights(request, arrays) if with_weights else request
        await engine.stream_into(sent, push, timeout=timeout, on_log_probs=on_log_probs)

    try:
        await run()
    except EngineFailure as exc:
        if with_weights or got_ids or not not_cached(exc.message):
            raise
        tasks.forget(model, lora.task_id)
        with_weights = True
        await run()  # a second "not cached" (with the weights) is the engine's failure
    if with_weights:
        tasks.mark_sent(model, lora.task_id)


async def _with_weights(request: EngineRequest, arrays: ArraysOf) -> EngineRequest:
    """The request with its task's weights, read off the event loop (adapters.py reads and
    checks the files); a file that is no longer the registered one fails the request."""
    try:
        weights, config = await asyncio.to_thread(arrays)
    except ValueError as exc:  # adapters.AdapterError
        raise EngineFailure(f"LoRA weights refused: {exc}") from None
    assert request.lora is not None
    return replace(request, lora=LoraRequest(request.lora.task_id, weights, config))
