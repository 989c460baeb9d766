"""The synchronous client: one grpc channel, four RPCs, typed results and typed errors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from autoglm.client._channel import call_metadata, create_channel
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

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """Blocking client of `autoglm.v1.TextGeneration`. Use as a context manager to close it.

    The model of a call is its `model` argument, else `config.model`, else the server's only
    model (looked up once with ListModels and remembered); with several models and none chosen,
    calls raise `ConfigError`. Every call's deadline is its `timeout`, else `config.timeout`.

    Calls are retried after UNAVAILABLE as `config.retry` says (see `RetryPolicy`), within that
    deadline; a stream only until its first message arrives. Generate calls without a
    `request_id` get one made up by the client, the same for every attempt.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._channel = create_channel(config)
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

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _deadline(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._config.timeout

    def _model(self, model: str | None) -> str:
        if model:
            return model
        if self._config.model:
            return self._config.model
        if self._discovered_model is None:
            self._discovered_model = only_model(self.list_models())
        return self._discovered_model

    def generate(
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
        request.model = self._model(model)
        operation = operation_for(request.messages)

        def attempt(attempt_timeout: float | None) -> tuple[pb.GenerateResponse, grpc.Future]:
            # A future rather than the blocking call, so that an interrupt (Ctrl-C) while
            # waiting cancels the RPC, and with it the engine request, instead of orphaning it.
            future = self._stub.Generate.future(
                request, timeout=attempt_timeout, metadata=rpc.metadata
            )
            try:
                return future.result(), future
            except BaseException:
                future.cancel()
                raise

        with RpcSpan("Generate", self._metadata, model=request.model, operation=operation) as rpc:
            response, future = self._retrying(rpc, self._deadline(timeout), attempt)
            trailing = future.trailing_metadata()
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
    ) -> Iterator[Delta]:
        """Generate a completion as a stream of deltas.

        The arguments are checked (and the model chosen) now; the RPC starts on the first
        `next()`. Closing the iterator, or leaving a `for` loop over it early, cancels the RPC;
        use `contextlib.closing` when the iterator might outlive the loop.
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
        request.model = self._model(model)
        return self._stream(request, self._deadline(timeout))

    def _retrying(
        self, rpc: RpcSpan, timeout: float | None, attempt: Callable[[float | None], T]
    ) -> T:
        """`attempt(its timeout)`, repeated as the retry policy allows; errors mapped."""
        attempts = Attempts(self._config.retry, timeout)
        while True:
            try:
                with map_exceptions():
                    return attempt(attempts.attempt_timeout())
            except AutoGLMError as exc:
                number = attempts.number
                delay = attempts.next_delay(exc)
                rpc.attempt_failed(
                    exc, attempt=number, of=attempts.policy.max_attempts, delay=delay
                )
                if delay is None:
                    raise
            time.sleep(delay)

    def _open_stream(
        self, request: pb.GenerateRequest, timeout: float | None, rpc: RpcSpan
    ) -> tuple[Any, pb.GenerateResponse | None]:
        """A started GenerateStream call and its first message (None: it ended without any).

        Retrying is safe only here, before any message has been received."""

        def attempt(attempt_timeout: float | None) -> tuple[Any, pb.GenerateResponse | None]:
            call = self._stub.GenerateStream(
                request, timeout=attempt_timeout, metadata=rpc.metadata
            )
            try:
                return call, next(call, None)
            except BaseException:
                call.cancel()  # no-op for a failed call; stops it on an interrupt
                raise

        return self._retrying(rpc, timeout, attempt)

    def _stream(self, request: pb.GenerateRequest, timeout: float | None) -> Iterator[Delta]:
        operation = operation_for(request.messages)
        with RpcSpan(
            "GenerateStream", self._metadata, model=request.model, operation=operation
        ) as rpc:
            call, first = self._open_stream(request, timeout, rpc)
            try:
                # The last delta (the one with finish_reason) is held back until the stream
                # ends, so that it can carry the trailers (`x-trace-id`, `x-autoglm-model-version`)
                # and the span is ended before the consumer sees it: a consumer that stops there
                # leaks no span.
                # From here on a message has been received: errors are raised, never retried.
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
                    response = _next(call)
                if last is not None:
                    trailing = call.trailing_metadata()
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

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models this server can generate with."""
        with RpcSpan("ListModels", self._metadata) as rpc:
            response = self._retrying(
                rpc,
                self._deadline(timeout),
                lambda t: self._stub.ListModels(
                    pb.ListModelsRequest(), timeout=t, metadata=rpc.metadata
                ),
            )
            rpc.succeeded()
        return [model_info_from_proto(m) for m in response.models]

    def count_tokens(
        self,
        prompt: str | None = None,
        *,
        messages: Iterable[MessageLike] | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> TokenCount:
        """The prompt tokens a request would use, with the model's tokenizer and chat template."""
        request = build_count_tokens_request(prompt, messages=messages)
        request.model = self._model(model)
        with RpcSpan("CountTokens", self._metadata, model=request.model) as rpc:
            response = self._retrying(
                rpc,
                self._deadline(timeout),
                lambda t: self._stub.CountTokens(request, timeout=t, metadata=rpc.metadata),
            )
            rpc.succeeded(input_tokens=response.prompt_tokens)
        return token_count_from_response(response)


def _next(call: Any) -> pb.GenerateResponse | None:
    """The stream's next message, None at its end; errors mapped (and never retried)."""
    with map_exceptions():
        return next(call, None)
