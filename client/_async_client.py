"""The asyncio client: the same API as `Client`, over a grpc.aio channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc.aio

from autoglm.client._channel import call_metadata, create_aio_channel
from autoglm.client._config import ClientConfig
from autoglm.client._exceptions import AutoGLMError, map_exceptions
from autoglm.client._requests import (
    MessageLike,
    Sampling,
    build_count_tokens_request,
    build_generate_request,
    completion_from_response,
    delta_from_response,
    model_info_from_proto,
    new_request_id,
    only_model,
    token_count_from_response,
)
from autoglm.client._retry import Attempts
from autoglm.client._tracing import RpcSpan, operation_for, trace_id_from
from autoglm.client._trailers import model_version_from
from autoglm.client._types import Completion, Delta, ModelInfo, TokenCount
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """Asyncio client of `autoglm.v1.TextGeneration`; create it inside the running event loop
    and use `async with` (or `await close()`). Model, deadline, retry and request-id rules are
    those of `Client`.

    Cancelling the task awaiting a call cancels the RPC (grpc.aio does this), and with it the
    engine request on the server. `timeout` arguments stay (rather than asking callers for
    `asyncio.timeout`, as ruff's ASYNC109 suggests) because they become the gRPC deadline, which
    the server sees and enforces on the engine, and to keep the API the same as `Client`'s.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._channel = create_aio_channel(config)
        self._stub = pb_grpc.TextGenerationStub(self._channel)
        self._metadata = call_metadata(config)
        self._discovered_model: str | None = None

    @classmethod
    def from_config(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """A client from `ClientConfig.load(path, **overrides)`."""
        return cls(ClientConfig.load(path, **overrides))

    @property
    def config(self) -> ClientConfig:
        return self._config

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _deadline(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._config.timeout

    async def _model(self, model: str | None) -> str:
        if model:
            return model
        if self._config.model:
            return self._config.model
        if self._discovered_model is None:
            self._discovered_model = only_model(await self.list_models())
        return self._discovered_model

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        model: str | None = None,
        adapter: str | None = None,
        max_tokens: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] | str = (),
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        logprobs: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Completion:
        """Generate a completion and return it whole. Exactly one of prompt/messages."""
        request = build_generate_request(
            prompt,
            messages=messages,
            sampling=Sampling(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=stop,
                repetition_penalty=repetition_penalty,
                frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty,
                logprobs=logprobs,
            ),
            request_id=request_id or new_request_id(),
            adapter=adapter or "",
        )
        request.model = await self._model(model)
        operation = operation_for(request.messages)

        async def attempt(attempt_timeout: float | None) -> tuple[pb.GenerateResponse, Any]:
            call = self._stub.Generate(request, timeout=attempt_timeout, metadata=rpc.metadata)
            return await call, await call.trailing_metadata()

        with RpcSpan("Generate", self._metadata, model=request.model, operation=operation) as rpc:
            response, trailing = await self._retrying(rpc, self._deadline(timeout), attempt)
            completion = completion_from_response(
                response,
                trace_id=trace_id_from(trailing),
                model_version=model_version_from(trailing),
            )
            rpc.succeeded(
                response_id=completion.request_id,
                finish_reason=completion.finish_reason,
                input_tokens=completion.prompt_tokens,
                output_tokens=completion.completion_tokens,
            )
        return completion

    def generate_stream(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        model: str | None = None,
        adapter: str | None = None,
        max_tokens: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] | str = (),
        repetition_penalty: float | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        logprobs: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Delta]:
        """Generate a completion as an async stream of deltas (`async for d in ...`).

        The arguments are checked now; the model is chosen and the RPC started on the first
        `__anext__`. `aclose()` cancels the RPC; leaving an `async for` early cancels it when the
        generator is finalized, so wrap it in `contextlib.aclosing` to cancel at once.
        """
        request = build_generate_request(
            prompt,
            messages=messages,
            sampling=Sampling(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=stop,
                repetition_penalty=repetition_penalty,
                frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty,
                logprobs=logprobs,
            ),
            request_id=request_id or new_request_id(),
            adapter=adapter or "",
        )
        return self._stream(request, model, self._deadline(timeout))

    async def _retrying(
        self,
        rpc: RpcSpan,
        timeout: float | None,
        attempt: Callable[[float | None], Awaitable[T]],
    ) -> T:
        """`await attempt(its timeout)`, repeated as the retry policy allows; errors mapped.
        Cancelling the task (also while it waits to retry) raises CancelledError: no retry."""
        attempts = Attempts(self._config.retry, timeout)
        while True:
            try:
                with map_exceptions():
                    return await attempt(attempts.attempt_timeout())
            except AutoGLMError as exc:
                number = attempts.number
                delay = attempts.next_delay(exc)
                rpc.attempt_failed(
                    exc, attempt=number, of=attempts.policy.max_attempts, delay=delay
                )
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    async def _open_stream(
        self, request: pb.GenerateRequest, timeout: float | None, rpc: RpcSpan
    ) -> tuple[Any, pb.GenerateResponse | None]:
        """A started GenerateStream call and its first message (None: it ended without any).

        Retrying is safe only here, before any message has been received."""

        async def attempt(attempt_timeout: float | None) -> tuple[Any, pb.GenerateResponse | None]:
            call = self._stub.GenerateStream(
                request, timeout=attempt_timeout, metadata=rpc.metadata
            )
            try:
                response = await call.read()
            except BaseException:
                call.cancel()  # no-op for a failed call; stops it when the task is cancelled
                raise
            return call, None if response is grpc.aio.EOF else response

        return await self._retrying(rpc, timeout, attempt)

    async def _stream(
        self, request: pb.GenerateRequest, model: str | None, deadline: float | None
    ) -> AsyncIterator[Delta]:
        request.model = await self._model(model)
        operation = operation_for(request.messages)
        with RpcSpan(
            "GenerateStream", self._metadata, model=request.model, operation=operation
        ) as rpc:
            call, first = await self._open_stream(request, deadline, rpc)
            try:
                # As in Client._stream: the last delta waits for the trailers (x-trace-id,
                # x-autoglm-model-version) and the span ends before the consumer sees it. A
                # message has been received by now: errors are raised, never retried.
                last: Delta | None = None
                response = first
                while response is not None:
                    delta = delta_from_response(response)
                    if delta.finish_reason is None and last is None:
                        yield delta  # every token but the last: no extra work
                    else:
                        if last is not None:
                            yield last
                        last = delta
                    response = await _next(call)
                if last is not None:
                    with map_exceptions():
                        trailing = await call.trailing_metadata()
                    last = replace(
                        last,
                        trace_id=trace_id_from(trailing),
                        model_version=model_version_from(trailing),
                    )
                    rpc.succeeded(
                        response_id=last.request_id,
                        finish_reason=last.finish_reason,
                        input_tokens=last.prompt_tokens,
                        output_tokens=last.completion_tokens,
                    )
                else:
                    rpc.succeeded()
                rpc.end()
                if last is not None:
                    yield last
            finally:
                call.cancel()  # no-op once the stream has ended; stops the engine otherwise

    async def list_models(
        self,
        *,
        timeout: float | None = None,
    ) -> list[ModelInfo]:
        """The models this server can generate with."""
        with RpcSpan("ListModels", self._metadata) as rpc:
            response = await self._retrying(
                rpc,
                self._deadline(timeout),
                lambda t: self._stub.ListModels(
                    pb.ListModelsRequest(), timeout=t, metadata=rpc.metadata
                ),
            )
            rpc.succeeded()
        return [model_info_from_proto(m) for m in response.models]

    async def count_tokens(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> TokenCount:
        """The prompt tokens a request would use, with the model's tokenizer and chat template."""
        request = build_count_tokens_request(prompt, messages=messages)
        request.model = await self._model(model)
        with RpcSpan("CountTokens", self._metadata, model=request.model) as rpc:
            response = await self._retrying(
                rpc,
                self._deadline(timeout),
                lambda t: self._stub.CountTokens(request, timeout=t, metadata=rpc.metadata),
            )
            rpc.succeeded(input_tokens=response.prompt_tokens)
        return token_count_from_response(response)


async def _next(call: Any) -> pb.GenerateResponse | None:
    """The stream's next message, None at its end; errors mapped (and never retried)."""
    with map_exceptions():
        response = await call.read()
    return None if response is grpc.aio.EOF else response
