"""engine/lora.py: the LoRA tensors of a request, and the resend when the engine lost a task.

The tensors are checked as Triton reads them (raw little-endian contents, the template's
dtypes); the resend against a stand-in engine that answers as TensorRT-LLM's executor does when
its LoRA cache lacks the task (lora_contract.NOT_CACHED_TEMPLATE's text). The real engine path:
tests/integration/test_lora_facade.py.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from autoglm.server.engine.client import EngineRequest, EngineSampling, build_infer_request
from autoglm.server.engine.lora import (
    LoraRequest,
    LoraTasks,
    not_cached,
    stream_with_lora,
)
from autoglm.server.errors import EngineFailure
from autoglm.server.generation.relay import Push

TASK = 7
WEIGHTS = np.arange(12, dtype=np.float16).reshape(2, 6)
CONFIG = np.array([[1, 0, 2], [3, 0, 2]], dtype=np.int32)
NOT_CACHED = f"LoRA task {TASK} not found in cache. Please send LoRA weights with request"


def request(lora: LoraRequest | None) -> EngineRequest:
    sampling = EngineSampling(1.0, 1, 1.0, 0, 1.0)
    return EngineRequest("m", "r", [1, 2, 3], 4, 0, 0, sampling, lora=lora)


def inputs(lora: LoraRequest | None) -> dict[str, tuple[str, list[int], bytes]]:
    req = build_infer_request(request(lora))
    return {
        t.name: (t.datatype, list(t.shape), raw)
        for t, raw in zip(req.inputs, req.raw_input_contents, strict=True)
    }


def test_no_adapter_sends_no_lora_tensor() -> None:
    assert not {"lora_task_id", "lora_weights", "lora_config"} & inputs(None).keys()


def test_task_id_alone_after_the_first_request() -> None:
    sent = inputs(LoraRequest(TASK))
    assert sent["lora_task_id"] == ("UINT64", [1, 1], np.uint64(TASK).tobytes())
    assert "lora_weights" not in sent and "lora_config" not in sent


def test_weights_and_config_with_the_first_request() -> None:
    sent = inputs(LoraRequest(TASK, WEIGHTS, CONFIG))
    dtype, shape, raw = sent["lora_weights"]
    assert (dtype, shape) == ("FP16", [1, 2, 6])
    assert np.array_equal(np.frombuffer(raw, "<f2").reshape(2, 6), WEIGHTS)
    dtype, shape, raw = sent["lora_config"]
    assert (dtype, shape) == ("INT32", [1, 2, 3])
    assert np.array_equal(np.frombuffer(raw, "<i4").reshape(2, 3), CONFIG)
    assert sent["lora_task_id"][2] == np.uint64(TASK).tobytes()


def test_the_executors_not_cached_text_is_recognised() -> None:
    assert not_cached(NOT_CACHED)
    assert not_cached(f"in ensemble 'm': {NOT_CACHED}")  # Triton may prefix it
    assert not not_cached("LoRA weights have the wrong shape")


def test_tasks_are_bounded_and_per_model() -> None:
    tasks = LoraTasks(limit=2)
    tasks.mark_sent("m", 1)
    tasks.mark_sent("m", 2)
    assert tasks.sent("m", 1) and not tasks.sent("other", 1)
    tasks.mark_sent("m", 3)  # evicts the least recently used: 2 (1 was just used)
    assert tasks.sent("m", 1) and tasks.sent("m", 3) and not tasks.sent("m", 2)
    tasks.forget("m", 1)
    assert not tasks.sent("m", 1)


class Engine:
    """Answers each call with the next scripted outcome: ids to push, or an error message."""

    def __init__(self, *outcomes: list[int] | str) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[EngineRequest] = []
        self.lora_tasks = LoraTasks()

    async def stream_into(
        self,
        request: EngineRequest,
        on_ids: Push,
        *,
        timeout: float | None = None,
        on_log_probs: Push | None = None,
    ) -> None:
        self.requests.append(request)
        outcome = self.outcomes.pop(0)
        await asyncio.sleep(0)
        if isinstance(outcome, str):
            raise EngineFailure(outcome)
        on_ids(outcome)


def arrays() -> tuple[np.ndarray, np.ndarray]:
    return WEIGHTS, CONFIG


async def run(engine: Engine) -> list[list[int]]:
    got: list[list[int]] = []
    await stream_with_lora(
        engine,  # type: ignore[arg-type]
        request(LoraRequest(TASK)),
        arrays,
        got.append,  # type: ignore[arg-type]
        timeout=None,
    )
    return got


def carried(engine: Engine) -> list[bool]:
    return [r.lora is not None and r.lora.carries_weights for r in engine.requests]


async def test_weights_go_with_the_first_request_of_a_task_only() -> None:
    engine = Engine([5], [6])
    assert await run(engine) == [[5]]
    assert await run(engine) == [[6]]
    assert carried(engine) == [True, False]
    assert all(r.lora is not None and r.lora.task_id == TASK for r in engine.requests)


async def test_not_cached_is_answered_by_one_resend_with_the_weights() -> None:
    engine = Engine([5], NOT_CACHED, [6], [7])
    await run(engine)
    assert await run(engine) == [[6]]  # evicted, another replica, a restarted engine
    assert await run(engine) == [[7]]  # cached again: the task id alone
    assert carried(engine) == [True, False, True, False]


async def test_a_second_not_cached_is_the_engines_failure() -> None:
    engine = Engine([5], NOT_CACHED, NOT_CACHED)
    await run(engine)
    with pytest.raises(EngineFailure, match="not found in cache"):
        await run(engine)
    assert carried(engine) == [True, False, True]  # resent once, not more


async def test_other_errors_are_not_resent() -> None:
    engine = Engine([5], "engine fault")
    await run(engine)
    with pytest.raises(EngineFailure, match="engine fault"):
        await run(engine)
    assert carried(engine) == [True, False]


async def test_a_failed_first_request_sends_the_weights_again_next_time() -> None:
    engine = Engine("engine fault", [5])
    with pytest.raises(EngineFailure):
        await run(engine)
    assert await run(engine) == [[5]]
    assert carried(engine) == [True, True]


async def test_unreadable_weights_fail_the_request() -> None:
    def changed() -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("adapter a: model.lora_weights.npy is not the registered file")

    engine = Engine([5])
    with pytest.raises(EngineFailure, match="not the registered file"):
        await stream_with_lora(
            engine,  # type: ignore[arg-type]
            request(LoraRequest(TASK)),
            changed,
            lambda ids: None,
            timeout=None,
        )
    assert engine.requests == []  # nothing sent
