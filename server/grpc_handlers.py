"""Rewrapping a grpc.aio method handler's behaviour, whatever kind of RPC it serves.

Interceptors that must run code inside the call (where the servicer context, its peer and its
auth context exist) replace the handler's behaviour with a wrapper; grpc builds handlers per RPC
kind, so the wrapper goes back into a handler of the same kind, with the same (de)serializers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["rewrap"]

Behavior = Callable[..., Any]


def rewrap(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior], Behavior]
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind whose behaviour is `wrap(the original behaviour)`."""
    if handler.request_streaming and handler.response_streaming:
        behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    return factory(
        wrap(behavior),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
