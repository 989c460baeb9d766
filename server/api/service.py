"""The autoglm.v1.TextGeneration servicer: validate → prepare → admit → generate → messages.

`pipeline.prepare` tokenizes and resolves max_tokens once; admission and the generation span
take that number, and the engine gets it (pipeline.py).

Both generation RPCs run through one code path (`_generate`), so metrics, traces, limits and the
audit record are the same for unary and streaming calls. Errors are mapped in errors.py only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass

import grpc

from autoglm.server import errors
from autoglm.server.api.validation import validate_count_tokens, validate_generate
from autoglm.server.audit.writer import AuditRecord, AuditWriter, principal_fields
from autoglm.server.engine.client import EngineClient
from autoglm.server.generation import pipeline
from autoglm.server.generation.plan import GeneratePlan
from autoglm.server.models import ModelRegistry, ServedModel
from autoglm.server.security.auth import current_principal
from autoglm.server.security.limits import Admission
from autoglm.server.telemetry import logs, tracing
from autoglm.server.telemetry.metrics import FacadeMetrics
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

log = logging.getLogger("autoglm.server.requests")

ANONYMOUS = "anonymous"  # the principal of insecure dev mode (no tokens)


@dataclass
class _Outcome:
    """What one generation did, filled in as it goes (for metrics, audit and the log)."""

    request_id: str
    code: grpc.StatusCode = grpc.StatusCode.OK
    last: pipeline.Delta | None = None
    plan: GeneratePlan | None = None


class TextGenerationService(pb_grpc.TextGenerationServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        engine: EngineClient,
        *,
        metrics: FacadeMetrics,
        admission: Admission,
        audit: AuditWriter | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.metrics = metrics
        self.admission = admission
        self.audit = audit
        # One writer thread keeps records in request-completion order, off the event loop
        # (an fsync per record costs ~2 ms on this machine's disk).
        self._audit_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")

    def _model(self, name: str) -> ServedModel:
        principal = current_principal()
        # Checked before existence, so a token cannot probe which other models exist.
        if principal is not None and not principal.allows_model(name):
            raise errors.PermissionDenied(f"model: this token may not use {name!r}")
        model = self.registry.get(name)
        if model is None:
            raise errors.NotFound(
                f"model: no model named {name!r}; served: {self.registry.names()}"
            )
        return model

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        text: list[str] = []
        ids: list[int] = []
        last = pipeline.Delta("")
        rid = ""
        async with aclosing(self._generate(request, context, "Generate")) as deltas:
            async for request_id, delta in deltas:
                rid = request_id
                text.append(delta.text)
                ids.extend(delta.token_ids)
                last = delta
        return pb.GenerateResponse(
            request_id=rid,
            model=request.model,
            text="".join(text),
            token_ids=ids,
            finish_reason=last.finish_reason,
            usage=pb.Usage(
                prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens
            ),
        )

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        # aclosing: when the caller goes away while this generator waits in `yield`, the inner
        # one is closed at once (engine request cancelled, limits released, audit written),
        # not whenever the garbage collector gets to it.
        async with aclosing(self._generate(request, context, "GenerateStream")) as deltas:
            # Each delta is everything the engine delivered while the previous message was
            # being written (relay.py): one message per delta, whatever its token count.
            async for rid, delta in deltas:
                msg = pb.GenerateResponse(
                    request_id=rid, model=request.model, text=delta.text, token_ids=delta.token_ids
                )
                if delta.finish_reason:
                    msg.finish_reason = delta.finish_reason
                    msg.usage.prompt_tokens = delta.prompt_tokens
                    msg.usage.completion_tokens = delta.completion_tokens
                yield msg

    async def _generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, rpc: str
    ) -> AsyncIterator[tuple[str, pipeline.Delta]]:
        started = time.monotonic()
        out = _Outcome(request_id=request.request_id or "-")
        obs = self.metrics.request(request.model, rpc)
        principal = current_principal()
        ticket = None
        completion: list[str] | None = [] if self.audit and self.audit.record_text else None
        trace_id = tracing.current_trace_id()
        if trace_id:
            context.set_trailing_metadata((("x-trace-id", trace_id),))
        try:
            out.plan = plan = validate_generate(request)
            out.request_id = plan.request_id
            logs.bind_request_id(plan.request_id)  # every log line of this RPC carries it
            # Tokenized before admission: the budget admission checks is the one the engine gets
            # (the room the prompt leaves in the context can lower the model's default).
            prepared = pipeline.prepare(plan, self._model(plan.model))
            ticket = self.admission.admit(
                principal.name if principal else ANONYMOUS,
                principal.limits if principal else None,
                prepared.max_new_tokens,
            )
            with tracing.generation_span(
                model=plan.model,
                request_id=plan.request_id,
                max_tokens=prepared.max_new_tokens,
                temperature=plan.sampling.temperature,
                top_p=plan.sampling.top_p,
            ) as span:
                first = True
                generation = pipeline.generate(
                    prepared, self.engine, timeout=context.time_remaining()
                )
                # One pass per delta — per coalesced message, not per token: metrics are
                # batched, and timed by the engine's arrival times carried on the delta.
                async with aclosing(generation) as deltas:
                    async for delta in deltas:
                        n = len(delta.token_ids)
                        if n:
                            if first:
                                tracing.first_token(span, timestamp_ns=_wall_ns(delta.first_at))
                                first = False
                            obs.tokens(n, first_at=delta.first_at, at=delta.last_at)
                        if completion is not None:
                            completion.append(delta.text)
                        out.last = delta
                        yield plan.request_id, delta
                last = out.last
                if last is not None:
                    tracing.set_usage(
                        span, input_tokens=last.prompt_tokens, output_tokens=last.completion_tokens
                    )
                    tracing.set_finish(
                        span, [_finish_name(last.finish_reason)], response_id=plan.request_id
                    )
        except asyncio.CancelledError:
            out.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            if isinstance(exc, errors.ResourceExhausted):
                self.metrics.limit_rejection(exc.limit)
                tracing.annotate({"autoglm.limit": exc.limit})  # which limit refused the call
            status = errors.status_for(exc, request_id=out.request_id)
            out.code = status.code
            tracing.record_status(status.code)
            await context.abort_with_status(status)
        finally:
            if ticket is not None:
                ticket.release()
            usage = out.last or pipeline.Delta("")
            obs.finish(out.code, usage.prompt_tokens, usage.completion_tokens)
            self._record(out, rpc, started, trace_id, completion)

    def _record(
        self,
        out: _Outcome,
        rpc: str,
        started: float,
        trace_id: str,
        completion: list[str] | None,
    ) -> None:
        """Log line and audit record (counts, ids, timings; text only when configured)."""
        duration = time.monotonic() - started
        last = out.last or pipeline.Delta("")
        finish = _finish_name(last.finish_reason) if out.code == grpc.StatusCode.OK else None
        model = out.plan.model if out.plan else None
        log.info(
            "%s %s trace=%s model=%s status=%s prompt_tokens=%d completion_tokens=%d "
            "finish=%s duration=%.3fs",
            rpc,
            out.request_id,
            trace_id or "-",
            model or "-",
            out.code.name,
            last.prompt_tokens,
            last.completion_tokens,
            finish or "-",
            duration,
        )
        if self.audit is None:
            return
        prompt = None
        if completion is not None and out.plan is not None:
            inp = out.plan.input
            prompt = inp.prompt if inp.prompt is not None else _joined(inp.messages)
        record = AuditRecord(
            request_id=out.request_id,
            rpc=rpc,
            status=out.code,
            trace_id=trace_id or None,
            model=model,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            duration_ms=round(duration * 1000, 3),
            finish_reason=finish,
            prompt=prompt,
            completion="".join(completion) if completion is not None else None,
            **principal_fields(current_principal()),
        )
        future = self._audit_pool.submit(self.audit.write, record)
        future.add_done_callback(_log_audit_failure)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        principal = current_principal()
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=m.spec.name,
                    engine=m.spec.engine,
                    max_context_tokens=m.spec.max_context_tokens,
                    max_output_tokens=m.spec.max_output_tokens,
                    default_max_tokens=m.spec.default_max_tokens,
                    has_chat_template=m.encoder.has_chat_template,
                )
                for m in self.registry
                if principal is None or principal.allows_model(m.spec.name)
            ]
        )

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        obs = self.metrics.request(request.model, "CountTokens")
        code = grpc.StatusCode.OK
        try:
            prompt_input = validate_count_tokens(request)
            model = self._model(request.model)
            ids = pipeline.encode_input(model, prompt_input)
            return pb.CountTokensResponse(
                model=request.model, prompt_tokens=len(ids), token_ids=ids
            )
        except Exception as exc:
            status = errors.status_for(exc, request_id="-")
            code = status.code
            tracing.record_status(status.code)
            await context.abort_with_status(status)
            raise AssertionError("unreachable") from None
        finally:
            obs.finish(code)

    def close(self) -> None:
        self._audit_pool.shutdown(wait=True)


def _wall_ns(perf_at: float) -> int:
    """A time.perf_counter instant as time.time_ns (span event timestamps are wall clock)."""
    return time.time_ns() - int((time.perf_counter() - perf_at) * 1e9)


def _finish_name(reason: int) -> str:
    return pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


def _joined(messages: tuple) -> str:  # type: ignore[type-arg]
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def _log_audit_failure(future: object) -> None:
    exc = future.exception()  # type: ignore[attr-defined]
    if exc is not None:
        # Loud on purpose: an audit gap is an incident (alert on this log line / metric).
        log.critical("AUDIT WRITE FAILED: %r", exc)
