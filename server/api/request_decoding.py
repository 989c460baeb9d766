"""Request decoding inside the handler, so malformed bytes get INVALID_ARGUMENT, not INTERNAL.

grpc decodes a request before the handler runs, and a protobuf DecodeError there (truncated
bytes, invalid UTF-8 in a string field, a wrong wire type) ends the call as INTERNAL: a bad input
reported as a server fault. This interceptor moves decoding into the handler for the methods it
knows, and turns a DecodeError into INVALID_ARGUMENT with a google.rpc.BadRequest violation.
Unknown fields are not an error: protobuf keeps them, which is what lets old servers accept
requests from newer clients of the same API version.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from autoglm.server.errors import InvalidArgument, status_for


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """For unary-request methods of `services`, decode the request inside the call."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._prefixes = tuple(f"/{s}/" for s in services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if (
            handler is None
            or handler.request_streaming
            or handler.request_deserializer is None
            or not details.method.startswith(self._prefixes)
        ):
            return handler
        deserialize = handler.request_deserializer
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _stream_behavior(handler.unary_stream, deserialize),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            _unary_behavior(handler.unary_unary, deserialize),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )


async def _decode(
    raw: bytes, deserialize: Callable[[bytes], Message], context: grpc.aio.ServicerContext
) -> Message:
    try:
        return deserialize(raw)
    except (DecodeError, UnicodeDecodeError, ValueError) as exc:
        error = InvalidArgument([("request", f"not a valid protobuf message: {exc}")])
        await context.abort_with_status(status_for(error, request_id="-"))
        raise AssertionError("unreachable") from None


def _unary_behavior(behavior: Callable[..., Any], deserialize: Callable[[bytes], Message]) -> Any:
    if not inspect.iscoroutinefunction(behavior):  # our servicer is async; keep others as they are
        raise TypeError("DecodeInterceptor wraps async handlers only")

    async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await _decode(raw, deserialize, context), context)

    return call


def _stream_behavior(behavior: Callable[..., Any], deserialize: Callable[[bytes], Message]) -> Any:
    if not inspect.isasyncgenfunction(behavior):
        raise TypeError("DecodeInterceptor wraps async-generator handlers only")

    async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = await _decode(raw, deserialize, context)
        async for item in behavior(request, context):
            yield item

    return call
