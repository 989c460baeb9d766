"""The image scenario's paths: one agent step (image_workload.ImageRequest) down each.

- direct: straight to Triton's `ModelStreamInfer` on the vLLM contract, with what the façade
  would send (the rendered prompt and the resized screenshot, image_workload.py), built and
  read by the façade's own functions (engine/text_request.py). One response per engine step,
  each with its `num_output_tokens`.
- facade: `GenerateStream` through the client library (`autoglm.client.AsyncClient`), as the
  agent calls it: `messages=[("system", …), ("user", [Image(png), task])]`. The client sends
  its bearer token as per-call metadata (no thread per call), so it costs the load generator
  little more than the raw stub of facade.py. On this contract the messages carry text and no
  token ids; the request's count comes from `usage` and is spread over the messages by text
  length (sse.token_split), as the OpenAI path does.
- openai: streamed `POST /v1/chat/completions` with the screenshot as a `data:` URL, over
  openai_sse.py's lean client.
- text: the facade path with the screenshot left out (ImageRequest.text_twin): what a request
  costs the façade without image handling.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import grpc
import orjson
from tritonclient.grpc import service_pb2_grpc

from autoglm.bench.direct import let_finish
from autoglm.bench.image_workload import ImageRequest
from autoglm.bench.loadgen import Recount
from autoglm.bench.openai_sse import OpenAIPath
from autoglm.bench.sse import StreamError, token_split
from autoglm.client import AsyncClient, AutoGLMError, ClientConfig, Image
from autoglm.server.devstack.pki import DevPki
from autoglm.server.engine.link import EngineLink
from autoglm.server.engine.text_request import build_text_infer_request, parse_text_response


class DirectImagePath:
    name = "direct"

    def __init__(self, target: str, link: EngineLink) -> None:
        self._channel = link.aio_channel(target)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = link.metadata()
        self._ids = itertools.count()

    async def stream(self, req: ImageRequest) -> AsyncIterator[int]:
        request = build_text_infer_request(
            replace(req.engine, request_id=f"bench-image-{next(self._ids)}")
        )
        call = self._stub.ModelStreamInfer(metadata=self._metadata)
        finished = False
        try:
            await call.write(request)
            await call.done_writing()
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise ConnectionError("Triton closed the stream before the final response")
                step = parse_text_response(resp)
                yield step.new_tokens
                if step.final:
                    finished = True
                    return
        finally:
            if finished:
                let_finish(call)  # as the façade does: no cancel after the final response
            else:
                call.cancel()

    async def close(self) -> None:
        await self._channel.close()


def _messages(req: ImageRequest) -> list[tuple[str, Any]]:
    user: Any = req.task if req.png is None else [Image(req.png, "image/png"), req.task]
    return [("system", req.system), ("user", user)]


class FacadeImagePath:
    """The agent's call through autoglm.client (`name` "text": its text twin's path)."""

    def __init__(
        self, endpoint: str, pki: DevPki, token: str, model: str, *, name: str = "facade"
    ) -> None:
        self.name = name
        self._config = ClientConfig(
            endpoint=endpoint,
            ca_cert=pki.ca_cert,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            token=token,
            model=model,
        )
        self._client: AsyncClient | None = None

    async def stream(self, req: ImageRequest) -> AsyncIterator[int | Recount]:
        if self._client is None:  # made inside the running loop (grpc.aio)
            self._client = AsyncClient(self._config)
        weights: list[int] = []  # text length of each message that carried tokens
        total: int | None = None
        try:
            deltas = self._client.generate_stream(
                messages=_messages(req), max_tokens=req.max_tokens, temperature=0.0
            )
            async with aclosing(deltas) as stream:
                async for delta in stream:
                    if delta.completion_tokens is not None:
                        total = delta.completion_tokens
                    # Every message before the last carries tokens (the façade sends none
                    # without); the last carries finish reason and usage, text only if held back.
                    if delta.finish_reason is None or delta.text:
                        weights.append(len(delta.text))
                        yield 1  # timed on arrival; the true counts follow (Recount)
        except AutoGLMError as exc:
            code = exc.code.name if exc.code is not None else type(exc).__name__
            raise StreamError(code, str(exc)) from None
        if total is None:
            raise StreamError("NO_USAGE", "the last message carried no usage")
        counts = token_split(total, weights)
        if total != len(weights):
            yield Recount(tuple(counts))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class OpenAIChatPath(OpenAIPath):
    """`/v1/chat/completions` with the agent's messages, the screenshot as a `data:` URL (the
    OpenAI API takes no other kind, issue #22). Each body is built once per request of the
    workload: what the load generator spends on JSON and base64 is not the façade's."""

    def __init__(self, endpoint: str, pki: DevPki, token: str, model: str) -> None:
        super().__init__(endpoint, pki, token, model, route="/v1/chat/completions")
        self._bodies: dict[tuple[int, bool], bytes] = {}

    def request_body(self, req: ImageRequest) -> bytes:  # type: ignore[override]
        key = (req.index, req.png is not None)
        if (body := self._bodies.get(key)) is None:
            body = self._bodies[key] = orjson.dumps(chat_body(self._model, req))
        return body


def chat_body(model: str, req: ImageRequest) -> dict[str, Any]:
    """The agent's call as an OpenAI chat completion, streamed with usage."""
    user: Any = req.task
    if req.png is not None:
        user = [
            {"type": "image_url", "image_url": {"url": data_url(req.png)}},
            {"type": "text", "text": req.task},
        ]
    return {
        "model": model,
        "messages": [{"role": "system", "content": req.system}, {"role": "user", "content": user}],
        "max_tokens": req.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
