"""Every gRPC call leaves an audit record, allowed or refused: a grpc.aio server interceptor.

It sits outside the auth interceptor, so it sees the calls auth refuses too: each call gets its
`CallFacts` (call_facts.py) before anything else runs, the auth decision and the principal are
noted on them, and when the RPC ends (grpc's done callback: after the last message, an abort,
or the caller's cancellation) one record is written with the status, the reason and the
caller's address. Generations write richer records of their own (counts, model, timings) and
mark the call as recorded; this one then writes nothing more.

Open methods (health checks, probed every few seconds by load balancers, with no caller to name)
are not audited. With `--audit-required`, a call arriving while the audit log cannot be written
is refused with UNAVAILABLE (audit/sink.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from autoglm.server import call_facts
from autoglm.server.audit.sink import AuditSink
from autoglm.server.audit.writer import AuditRecord, principal_fields
from autoglm.server.grpc_handlers import rewrap
from autoglm.server.security.auth import DEFAULT_OPEN_METHODS
from autoglm.server.telemetry import tracing

__all__ = ["AuditInterceptor", "record_of"]

_MAX_PROBED = 200  # characters of an unknown method's path kept in its record


class AuditInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, sink: AuditSink, *, open_methods: frozenset[str] = DEFAULT_OPEN_METHODS
    ) -> None:
        self._sink = sink
        self._open_methods = open_methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if details.method in self._open_methods:
            return handler
        if handler is None:
            # No such method: what grpc would answer, recorded (probing for methods is worth a
            # line). On the wire every call is a stream, so one stream handler answers any kind.
            handler = grpc.stream_stream_rpc_method_handler(_unimplemented)
        return _wrapped(handler, details.method, self._sink)


async def _unimplemented(_requests: Any, context: grpc.aio.ServicerContext) -> Any:
    # An async generator: a streaming behaviour must be one for the wrappers that iterate it.
    call_facts.note_reason("method")
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    yield  # pragma: no cover - never reached: abort raises


def record_of(facts: call_facts.CallFacts, code: grpc.StatusCode, trace_id: str) -> AuditRecord:
    """The audit record of a call nobody else recorded (refused, or not a generation)."""
    return AuditRecord(
        request_id="-",
        rpc=facts.method if facts.api == "grpc" else f"{facts.api}:{facts.method}",
        status=code,
        trace_id=trace_id or None,
        peer=facts.peer,
        reason=facts.reason,
        **principal_fields(facts.principal),
    )


def _final_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if context.cancelled():
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)


def _wrapped(handler: grpc.RpcMethodHandler, method: str, sink: AuditSink) -> grpc.RpcMethodHandler:
    # The method's name; a caller's made-up path is kept whole (bounded) to show what was probed.
    known = method.startswith("/autoglm.v1.") or method.startswith("/grpc.")
    name = method.rsplit("/", 1)[-1] if known else method[:_MAX_PROBED]

    def start(context: grpc.aio.ServicerContext) -> call_facts.CallFacts:
        facts = call_facts.begin("grpc", name, context.peer())
        trace_id = tracing.current_trace_id()

        def done(ctx: grpc.aio.ServicerContext) -> None:
            if not facts.recorded:
                sink.submit(record_of(facts, _final_code(ctx), trace_id))

        context.add_done_callback(done)
        return facts

    async def refuse_if_unwritable(context: grpc.aio.ServicerContext) -> None:
        refusal = sink.refusal()
        if refusal is not None:
            call_facts.note_reason("audit_unavailable")
            await context.abort(grpc.StatusCode.UNAVAILABLE, refusal)

    return rewrap(handler, lambda behavior: _audited(behavior, start, refuse_if_unwritable))


def _audited(
    behavior: Callable[..., Any],
    start: Callable[[grpc.aio.ServicerContext], call_facts.CallFacts],
    refuse_if_unwritable: Callable[[grpc.aio.ServicerContext], Awaitable[None]],
) -> Callable[..., Any]:
    # grpc.aio picks how to run a behaviour by inspecting it: each wrapper must be the same kind
    # of callable as the one it wraps. The façade's and grpc's own aio servicers are async.
    wrapper: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start(context)
            await refuse_if_unwritable(context)
            async for item in behavior(request, context):
                yield item

        wrapper = stream
    elif inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start(context)
            await refuse_if_unwritable(context)
            return await behavior(request, context)

        wrapper = unary
    else:
        # A sync behaviour runs in grpc's executor: recorded (done callback), never refused.
        def sync(request: Any, context: Any) -> Any:
            start(context)
            return behavior(request, context)

        wrapper = sync
    return wrapper
