"""The asyncio client: the same API as `Client`, over a grpc.aio channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc.aio

from autoglm.client._channel import call_metadata, create_aio_channel
from autoglm.client._config import ClientConfig
from autoglm.client._exceptions import map_exceptions
from autoglm.client._requests import (
    MessageLike,
    Sampling,
    build_count_tokens_request,
    build_generate_request,
    completion_from_response,
    delta_from_response,
    model_info_from_proto,
    only_model,
    token_count_from_response,
)
from autoglm.client._tracing import RpcSpan, operation_for, trace_id_from
from autoglm.client._types import Completion, Delta, ModelInfo, TokenCount
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

__all__ = ["AsyncClient"]


class AsyncClient:
    """Asyncio client of `autoglm.v1.TextGeneration`; create it inside the running event loop
    and use `async with` (or `await close()`). Model and deadline rules are those of `Client`.

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
        max_tokens: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] | str = (),
        repetition_penalty: float | None = None,
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
            ),
            request_id=request_id,
        )
        request.model = await self._model(model)
        operation = operation_for(request.messages)
        with RpcSpan("Generate", self._metadata, model=request.model, operation=operation) as rpc:
            with map_exceptions():
                call = self._stub.Generate(
                    request, timeout=self._deadline(timeout), metadata=rpc.metadata
                )
                response = await call
                trailing = await call.trailing_metadata()
            completion = completion_from_response(response, trace_id=trace_id_from(trailing))
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
        max_tokens: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] | str = (),
        repetition_penalty: float | None = None,
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
            ),
            request_id=request_id,
        )
        return self._stream(request, model, self._deadline(timeout))

    async def _stream(
        self, request: pb.GenerateRequest, model: str | None, deadline: float | None
    ) -> AsyncIterator[Delta]:
        request.model = await self._model(model)
        operation = operation_for(request.messages)
        with RpcSpan(
            "GenerateStream", self._metadata, model=request.model, operation=operation
        ) as rpc:
            call = self._stub.GenerateStream(request, timeout=deadline, metadata=rpc.metadata)
            try:
                # As in Client._stream: the last delta waits for the trailers (x-trace-id) and
                # the span ends before the consumer sees it.
                last: Delta | None = None
                while True:
                    with map_exceptions():
                        response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    delta = delta_from_response(response)
                    if delta.finish_reason is None and last is None:
                        yield delta  # every token but the last: no extra work
                        continue
                    if last is not None:
                        yield last
                    last = delta
                if last is not None:
                    with map_exceptions():
                        trailing = await call.trailing_metadata()
                    last = replace(last, trace_id=trace_id_from(trailing))
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
        with RpcSpan("ListModels", self._metadata) as rpc, map_exceptions():
            response = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._deadline(timeout), metadata=rpc.metadata
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
        with RpcSpan("CountTokens", self._metadata, model=request.model) as rpc, map_exceptions():
            response = await self._stub.CountTokens(
                request, timeout=self._deadline(timeout), metadata=rpc.metadata
            )
            rpc.succeeded(input_tokens=response.prompt_tokens)
        return token_count_from_response(response)
