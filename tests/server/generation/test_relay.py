"""The coalescing relay (relay.py) with a fake engine reader: no gRPC, no Triton."""

from __future__ import annotations

import asyncio

import pytest

from autoglm.server.generation.relay import Push, Relay


class FakeEngine:
    """Pushes the responses it is given; `gate` lets a test release them one at a time."""

    def __init__(self, responses: list[list[int]], *, error: Exception | None = None) -> None:
        self.responses = responses
        self.error = error
        self.gate: asyncio.Queue[None] = asyncio.Queue()
        self.cancelled = False
        self.pushed = 0

    async def read(self, push: Push) -> None:
        try:
            for ids in self.responses:
                await self.gate.get()
                push(ids)
                self.pushed += 1
            if self.error is not None:
                raise self.error
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def release(self, n: int) -> None:
        for _ in range(n):
            self.gate.put_nowait(None)


async def until(predicate: object, turns: int = 100) -> None:
    for _ in range(turns):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_a_slow_writer_gets_everything_that_piled_up_in_one_batch() -> None:
    engine = FakeEngine([[1], [2], [3, 4], [5]])
    async with Relay(engine.read) as relay:
        engine.release(1)
        first = await relay.take()
        assert first is not None and first.ids == [1]
        engine.release(3)  # the writer is "busy": three responses arrive meanwhile
        await until(lambda: engine.pushed == 4)
        batch = await relay.take()
        assert batch is not None and batch.ids == [2, 3, 4, 5]
        assert first.first_at <= first.last_at <= batch.first_at <= batch.last_at
        assert await relay.take() is None
    assert not engine.cancelled


async def test_a_fast_writer_gets_every_response_on_its_own() -> None:
    engine = FakeEngine([[7], [8], [9]])
    got: list[list[int]] = []
    async with Relay(engine.read) as relay:
        for _ in range(3):
            engine.release(1)
            batch = await relay.take()
            assert batch is not None
            got.append(batch.ids)
        assert await relay.take() is None
    assert got == [[7], [8], [9]]


async def test_tokens_before_an_engine_error_are_delivered_then_the_error() -> None:
    engine = FakeEngine([[1], [2]], error=RuntimeError("engine failed"))
    engine.release(2)
    async with Relay(engine.read) as relay:
        await until(lambda: engine.pushed == 2)
        batch = await relay.take()
        assert batch is not None and batch.ids == [1, 2]
        with pytest.raises(RuntimeError, match="engine failed"):
            await relay.take()


async def test_closing_early_cancels_the_reader_at_once() -> None:
    engine = FakeEngine([[1], [2], [3]])
    async with Relay(engine.read) as relay:
        engine.release(1)
        assert (await relay.take()) is not None
    # __aexit__ waited for the reader: it has been cancelled, not left running.
    assert engine.cancelled and engine.pushed == 1


async def test_the_owner_task_ending_cancels_the_reader() -> None:
    """gRPC cancels the handler's task when the caller leaves: the engine call must go too."""
    engine = FakeEngine([[1], [2]])
    relay = Relay(engine.read)

    async def handler() -> None:
        relay.start()
        await asyncio.Event().wait()  # blocked in a write to a caller who is gone

    task = asyncio.create_task(handler())
    await until(lambda: relay._task is not None)
    task.cancel()
    await asyncio.wait((task,))
    await until(lambda: engine.cancelled)
    await relay.aclose()


async def test_a_cancelled_take_leaves_the_relay_usable_and_closable() -> None:
    engine = FakeEngine([[1]])
    async with Relay(engine.read) as relay:
        waiting = asyncio.create_task(relay.take())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        engine.release(1)
        batch = await relay.take()
        assert batch is not None and batch.ids == [1]


async def test_a_writer_that_is_behind_lingers_and_takes_what_arrived_meanwhile() -> None:
    engine = FakeEngine([[1], [2], [3], [4]])
    async with Relay(engine.read, linger_s=0.2) as relay:
        engine.release(1)
        assert (batch := await relay.take()) is not None and batch.ids == [1]
        engine.release(1)  # arrives while message [1] is being written: the writer is behind
        await until(lambda: engine.pushed == 2)
        asyncio.get_running_loop().call_later(0.02, engine.release, 2)  # within the linger
        batch = await relay.take()
        assert batch is not None and batch.ids == [2, 3, 4]


async def test_a_writer_that_keeps_up_never_lingers() -> None:
    engine = FakeEngine([[1], [2]])
    async with Relay(engine.read, linger_s=30.0) as relay:
        for expected in ([1], [2]):
            engine.release(1)
            async with asyncio.timeout(5.0):  # (in this task: the buffer is empty at take)
                batch = await relay.take()
            assert batch is not None and batch.ids == expected


async def test_a_logprobs_relay_batches_one_value_per_id() -> None:
    engine = FakeEngine([[1], [2], [3, 4]])

    async def read(push: Push) -> None:  # the values go ahead of their ids (pipeline.py)
        def with_values(ids: list[int]) -> None:
            relay.push_logprobs([-float(i) for i in ids])
            push(ids)

        await engine.read(with_values)

    relay = Relay(read, logprobs=True)
    async with relay:
        engine.release(1)
        first = await relay.take()
        assert first is not None and (first.ids, first.logprobs) == ([1], [-1.0])
        engine.release(2)
        await until(lambda: engine.pushed == 3)
        batch = await relay.take()
        assert batch is not None
        assert (batch.ids, batch.logprobs) == ([2, 3, 4], [-2.0, -3.0, -4.0])
        assert await relay.take() is None


async def test_a_plain_relay_has_no_logprobs() -> None:
    engine = FakeEngine([[5]])
    engine.release(1)
    async with Relay(engine.read) as relay:
        batch = await relay.take()
        assert batch is not None and batch.logprobs is None
        with pytest.raises(AssertionError):
            relay.push_logprobs([0.0])
