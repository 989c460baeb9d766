"""`/v1/chat/completions` and `/v1/completions`: a checked body → `Generations` → JSON or SSE.

The two routes differ only in their request model, how the request becomes an autoglm.v1
request (protocol.py) and the shape of their chunks (chunks.py); `Route` holds those
differences and `serve` does the rest once.

Errors before the first token become an HTTP status (errors.http_error_for): the first delta is
awaited before the response starts, so validation, permission, limits and an unavailable
engine are 4xx/503 answers, never a 200 with an error inside. A failure after the stream began
is one SSE event with the `error` object, then the stream closes.

Closing the connection cancels the engine request: `DisconnectGuard` cancels the request's
task when the client disconnects, and leaving `aclosing` closes the generation (calls.py,
pipeline.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from autoglm.server import errors
from autoglm.server.api.calls import Call, Generations, finish_name
from autoglm.server.api.openai import chunks, model_names, protocol
from autoglm.server.api.openai.streaming import DisconnectGuard, EventStream
from autoglm.server.api.validation import validate_generate
from autoglm.server.errors import InvalidArgument
from autoglm.server.generation.pipeline import Delta, Prepared
from autoglm.server.generation.plan import GeneratePlan
from autoglm.server.security.auth import Principal
from autoglm.server.telemetry.tracing import HttpServerSpan
from autoglm.v1 import text_generation_pb2 as pb

JSON = "application/json"
SSE_HEADERS = {
    "cache-control": "no-cache",
    # Proxies (nginx) must pass events on as they come, not buffer the stream.
    "x-accel-buffering": "no",
}


@dataclass(frozen=True, slots=True)
class Route:
    rpc: str  # metrics/audit name: "chat.completions" | "completions"
    body: type[Any]  # the pydantic request model
    to_request: Callable[[Any], pb.GenerateRequest]
    prompt_field: str  # the caller's name of the prompt ("messages" | "prompt")
    id_prefix: str
    chat: bool


CHAT = Route(
    "chat.completions",
    protocol.ChatCompletionRequest,
    protocol.chat_request,
    "messages",
    "chatcmpl-",
    chat=True,
)
COMPLETIONS = Route(
    "completions",
    protocol.CompletionRequest,
    protocol.completion_request,
    "prompt",
    "cmpl-",
    chat=False,
)


def error_response(
    exc: BaseException, *, request_id: str, prompt_field: str = "prompt"
) -> Response:
    status, body, headers = errors.http_error_for(
        exc, request_id=request_id, param_names=protocol.renamer(prompt_field)
    )
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)


async def serve(
    route: Route,
    generations: Generations,
    body: bytes,
    *,
    principal: Principal | None,
    request_id: str,
    span: HttpServerSpan,
    disconnected: Callable[[], Awaitable[None]],
) -> Response:
    """Answer one generation request; `span` is ended when the answer's last byte is out."""
    try:
        req = protocol.parse(route.body, body)
    except InvalidArgument as exc:
        req, parse_error = None, exc
    else:
        parse_error = None
    rid = request_id or "-"

    def check() -> GeneratePlan:
        nonlocal rid
        if parse_error is not None:
            raise parse_error
        grpc_request = route.to_request(req)
        grpc_request.request_id = request_id
        # `BASE:ADAPTER` or an adapter's own name (model_names.py)
        grpc_request.model, grpc_request.adapter = model_names.resolve(
            grpc_request.model, generations.registry, principal
        )
        plan = validate_generate(grpc_request)
        rid = plan.request_id
        return plan

    prepared: list[Prepared] = []
    call = Call(
        api="openai",
        rpc=route.rpc,
        principal=principal,
        request_id=rid,
        model=model_names.metrics_model(req.model, generations.registry) if req else "",
    )
    answered: list[int] = []  # the model version that answers (canary.py)
    gen = generations.generate(call, check, on_prepared=prepared.append, on_version=answered.append)
    guard = DisconnectGuard(disconnected)
    try:
        first = await anext(gen)
    except BaseException as exc:
        guard.close()
        await gen.aclose()
        if not isinstance(exc, Exception) and not guard.swallow(exc):
            raise
        response = (
            error_response(exc, request_id=rid, prompt_field=route.prompt_field)
            if isinstance(exc, Exception)
            else Response(status_code=499)  # the client went away; nobody reads this
        )
        span.end(response.status_code)
        return response
    assert req is not None  # check() passed
    fingerprint = f"autoglm-{prepared[0].plan.model}-v{answered[0]}" if answered else None
    head = chunks.StreamHeader(route.id_prefix + rid, int(time.time()), req.model, fingerprint)
    tokens = _TokenText(prepared[0]) if prepared and _wants_logprobs(req) else None
    headers = {"x-request-id": rid}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _events(route, head, first, gen, tokens, include_usage, rid, span)
        return EventStream(events, guard, headers=SSE_HEADERS | headers)
    try:
        text, last, lp = await _collect(first, gen, tokens)
    except BaseException as exc:
        guard.close()
        if not isinstance(exc, Exception) and not guard.swallow(exc):
            raise
        response = (
            error_response(exc, request_id=rid, prompt_field=route.prompt_field)
            if isinstance(exc, Exception)
            else Response(status_code=499)
        )
        span.end(response.status_code)
        return response
    guard.close()
    finish = finish_name(last.finish_reason)
    if route.chat:
        payload = chunks.chat_completion(
            head, text, finish, last.prompt_tokens, last.completion_tokens,
            chunks.token_logprobs(*lp) if tokens else None,
        )  # fmt: skip
    else:
        payload = chunks.text_completion(
            head, text, finish, last.prompt_tokens, last.completion_tokens,
            chunks.completion_logprobs(*lp, 0) if tokens else None,
        )  # fmt: skip
    span.end(200)
    return Response(payload, media_type=JSON, headers=headers)


def _wants_logprobs(req: Any) -> bool:
    lp = req.logprobs
    return lp is not None and lp is not False


class _TokenText:
    """Each generated token's own text (the `token` of a logprobs entry)."""

    def __init__(self, prepared: Prepared) -> None:
        self._tokenizer = prepared.model.encoder.tokenizer

    def __call__(self, ids: list[int]) -> list[str]:
        return [self._tokenizer.decode([i], skip_special_tokens=False) for i in ids]


async def _collect(
    first: Delta, gen: AsyncIterator[Delta], tokens: _TokenText | None
) -> tuple[str, Delta, tuple[list[str], list[float]]]:
    text = [first.text]
    ids = list(first.token_ids)
    lps = list(first.logprobs)
    last = first
    async with aclosing(gen):  # type: ignore[type-var]
        # Read to the generator's end, not just to the delta with finish_reason: the call
        # records its outcome after that one (closing it there would count as a cancellation).
        async for delta in gen:
            text.append(delta.text)
            ids.extend(delta.token_ids)
            lps.extend(delta.logprobs)
            last = delta
    words = tokens(ids) if tokens is not None else []
    return "".join(text), last, (words, lps if tokens is not None else [])


async def _events(
    route: Route,
    head: chunks.StreamHeader,
    first: Delta,
    gen: AsyncIterator[Delta],
    tokens: _TokenText | None,
    include_usage: bool,
    rid: str,
    span: HttpServerSpan,
) -> AsyncIterator[bytes]:
    encoder = chunks.ChatChunks(head) if route.chat else chunks.CompletionChunks(head)
    status = 200
    offset = 0
    try:
        async with aclosing(gen):  # type: ignore[type-var]
            delta = first
            while True:
                finish = finish_name(delta.finish_reason) if delta.finish_reason else None
                logprobs = None
                if tokens is not None and delta.token_ids:
                    words = tokens(delta.token_ids)
                    if route.chat:
                        logprobs = chunks.token_logprobs(words, delta.logprobs)
                    else:
                        logprobs = chunks.completion_logprobs(words, delta.logprobs, offset)
                        offset += sum(map(len, words))
                # Empty deltas (a token still incomplete as UTF-8, a stop string pending) are
                # not sent, except the last, which carries finish_reason.
                if delta.text or finish or logprobs is not None:
                    yield encoder.delta(delta.text, finish_reason=finish, logprobs=logprobs)
                # To the generator's end (see _collect), which comes right after finish_reason.
                nxt = await anext(gen, None)
                if nxt is None:
                    break
                delta = nxt
        if include_usage:
            yield encoder.usage(delta.prompt_tokens, delta.completion_tokens)
        yield chunks.DONE
    except Exception as exc:
        status, body, _ = errors.http_error_for(
            exc, request_id=rid, param_names=protocol.renamer(route.prompt_field)
        )
        yield chunks.error_event(body)
    except BaseException:
        status = 499  # the client went away (nginx's code for it; never sent)
        raise
    finally:
        span.end(status)
