"""Answers written in the request's own task, and cancelled when the client goes away.

uvicorn runs each request in a task of its own and does not cancel it when the client
disconnects; Starlette's `StreamingResponse` watches for that in a task group, so the body is
iterated in another task than the handler's. Here the whole answer (first token, collecting,
streaming) stays in the request's task: the generation's OpenTelemetry context is attached and
detached in one `contextvars.Context`, as it must be, and no task is made per response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from starlette.responses import Response


class DisconnectGuard:
    """Cancels the current task when the client closes the connection.

    The whole answer (first token, collecting, streaming) runs in the request's own task:
    the generation's context (its span) is attached and detached in one task, which
    OpenTelemetry requires, and no task is made per response. A watcher task waits for
    `http.disconnect` and cancels this one; `swallow` tells that cancellation apart from
    any other (server shutdown), which must propagate.
    """

    def __init__(self, disconnected: Callable[[], Awaitable[None]]) -> None:
        self._task = asyncio.current_task()
        self.gone = False
        self._watch = asyncio.ensure_future(self._run(disconnected))

    async def _run(self, disconnected: Callable[[], Awaitable[None]]) -> None:
        await disconnected()
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        self._watch.cancel()

    def swallow(self, exc: BaseException) -> bool:
        """True when `exc` is this guard's cancellation (then the task is uncancelled)."""
        if not (self.gone and isinstance(exc, asyncio.CancelledError)):
            return False
        if self._task is not None:
            self._task.uncancel()
        return True


class EventStream(Response):
    """A `text/event-stream` response written in the request's task (see DisconnectGuard);
    closing the connection cancels it, and with it the generation."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncIterator[bytes], guard: DisconnectGuard, headers: dict[str, str]
    ) -> None:
        self.events = events
        self.guard = guard
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with aclosing(self.events):  # type: ignore[type-var]
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                async for chunk in self.events:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self.guard.close()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except BaseException as exc:
            self.guard.close()
            if not self.guard.swallow(exc):
                raise
