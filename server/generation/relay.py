"""Coalescing relay: the engine stream is read in its own task, the caller takes what piled up.

Why (issue #8, measured with `autoglm bench`): the façade's CPU went to gRPC's per-message cost
— one `GenerateResponse`, HTTP/2 frame, TLS record and `sendmsg` per token — not to its own logic.
Reading and writing are therefore decoupled: a reader task appends every engine response's
token ids to a buffer as they arrive; the writer (the RPC handler) takes the whole buffer each
time its previous message has been written. When the caller or the network is slower than the
engine, several tokens go out as one message; when it keeps up, every token still goes out at
once on its own (no added latency).

Under pressure — tokens were already waiting when the writer came back for more, i.e. it is
behind — the writer lingers `linger_s` (1 ms) before taking, so the reader gets another turn:
measured on grpc.aio on the 2-core development VM, a saturated event loop otherwise runs reader and
writer in lock-step, one read and one write per token per loop turn, and never coalesces even
with a backlog piling up in gRPC's buffers. A writer that keeps up never lingers.

The reader runs `read(push)` (e.g. `EngineClient.stream_into`), which calls `push(ids)` per
engine response. A relay made with `logprobs=True` also takes the ids' log-probabilities: the
reader hands them to `push_logprobs` before the ids they belong to (EngineClient.stream_into's
`on_log_probs`), so every batch carries exactly one value per id. A text engine's reader (the
vLLM contract) calls `push_text(text, tokens)` instead, and its batches carry text and a token
count. Closing the relay — or the
task that opened it finishing, for any reason — cancels the reader, which cancels the engine
call at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["Batch", "Relay"]

# At most this long a token may wait, beyond the writer's own delay, to share a message; well
# under the 2 ms added-ITL budget of issue #8 and only spent when the writer is already behind.
LINGER_S = 0.001

Push = Callable[[list[int]], None]
Reader = Callable[[Push], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Batch:
    """Token ids that arrived since the last take, with engine arrival times (perf_counter s)."""

    ids: list[int]
    first_at: float  # arrival of ids[0]
    last_at: float  # arrival of ids[-1]
    logprobs: list[float] | None = None  # one per id, from a relay made with logprobs=True
    # A text engine's batch (push_text): its text and how many tokens made it; `ids` is empty.
    text: str = ""
    tokens: int = 0


class Relay:
    """One generation's buffer between the engine reader task and the writer.

    Use as `async with Relay(read) as relay: while (batch := await relay.take()) …`.
    """

    __slots__ = (
        "_first_at",
        "_ids",
        "_last_at",
        "_linger_s",
        "_logprobs",
        "_owner",
        "_read",
        "_task",
        "_texts",
        "_tokens",
        "_waiter",
    )

    def __init__(self, read: Reader, *, linger_s: float = LINGER_S, logprobs: bool = False) -> None:
        self._read = read
        self._linger_s = linger_s
        self._ids: list[int] = []
        self._texts: list[str] = []  # a text engine's pieces (push_text)
        self._tokens = 0
        self._logprobs: list[float] | None = [] if logprobs else None
        self._first_at = 0.0
        self._last_at = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> Relay:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        # The task is created in the current context: the reader's spans are children of the
        # caller's current span (e.g. the generation span).
        self._task = task = loop.create_task(self._read(self._push))
        task.add_done_callback(self._wake)
        owner = asyncio.current_task()
        if owner is not None:
            # The RPC's task ending (cancelled by gRPC when the caller leaves or its deadline
            # passes) cancels the engine call even before the handler's generators are closed.
            self._owner = owner
            owner.add_done_callback(self._cancel_reader)

    def _push(self, ids: list[int]) -> None:
        """Called by the reader per engine response (the hot path: keep it to a few lines)."""
        now = time.perf_counter()
        if not self._ids:
            self._first_at = now
        self._ids += ids
        self._last_at = now
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push_text(self, text: str, tokens: int) -> None:
        """A text engine's `push` (the vLLM contract, text_request.py): new text and the number
        of tokens it came from (text may be "" while the engine holds a character back)."""
        now = time.perf_counter()
        if not self._texts:
            self._first_at = now
        self._texts.append(text)
        self._tokens += tokens
        self._last_at = now
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push_logprobs(self, values: list[float]) -> None:
        """The log-probabilities of the ids the next `push` brings (one per id); a relay made
        with logprobs=True only. No wake-up: the ids' push does that."""
        assert self._logprobs is not None, "push_logprobs on a relay made without logprobs"
        self._logprobs += values

    def _wake(self, _task: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _cancel_reader(self, _owner: object = None) -> None:
        if self._task is not None:
            self._task.cancel()

    async def take(self) -> Batch | None:
        """Everything that arrived since the last take (waits for at least one token).

        None once the reader finished and every token was taken; the reader's exception (an
        engine error) is raised after the tokens that arrived before it.
        """
        task = self._task
        assert task is not None, "take() before start()"
        if (self._ids or self._texts) and self._linger_s > 0 and not task.done():
            # Behind: tokens arrived while the last message was written. Let the reader drain
            # what gRPC has buffered for a moment, then send it all as one message.
            await asyncio.sleep(self._linger_s)
        while not (self._ids or self._texts):
            if task.done():
                exc = task.exception()  # CancelledError if the reader was cancelled
                if exc is not None:
                    raise exc
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._texts:
            return self._take_text()
        ids, self._ids = self._ids, []
        if self._logprobs is None:
            return Batch(ids, self._first_at, self._last_at)
        logprobs, self._logprobs = self._logprobs, []
        return Batch(ids, self._first_at, self._last_at, logprobs)

    def _take_text(self) -> Batch:
        text, tokens = "".join(self._texts), self._tokens
        self._texts, self._tokens = [], 0
        logprobs = None
        if self._logprobs is not None:
            logprobs, self._logprobs = self._logprobs, []
        return Batch([], self._first_at, self._last_at, logprobs, text, tokens)

    async def aclose(self) -> None:
        """Cancel the reader (hence the engine call) and wait until it has finished."""
        if self._owner is not None:
            self._owner.remove_done_callback(self._cancel_reader)
            self._owner = None
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()  # retrieved: an error nobody took is not logged as "never retrieved"
