"""One generation call, whatever the front door: plan → model → prepare → admit → deltas.

Both front doors (the gRPC servicer, service.py, and the OpenAI-compatible HTTP API, openai/)
build a `GeneratePlan` their own way and hand it here, so the model permission, tokenization,
admission, the generation span, metrics, the log line and the audit record exist once. Errors
leave as the domain exceptions of errors.py; each front door maps them (gRPC status, HTTP
status) in errors.py as well.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field

import grpc

from autoglm.server import call_facts, errors
from autoglm.server.adapters import ServedAdapter
from autoglm.server.audit.sink import AuditSink
from autoglm.server.audit.writer import AuditRecord, principal_fields
from autoglm.server.engine.canary import Route, VersionedEngine
from autoglm.server.engine.client import EngineClient
from autoglm.server.generation import pipeline, text_pipeline
from autoglm.server.generation.plan import GeneratePlan, PromptInput, Sampling
from autoglm.server.models import ModelRegistry, ServedModel
from autoglm.server.security.auth import Principal
from autoglm.server.security.limits import AdmissionControl
from autoglm.server.telemetry import tracing
from autoglm.server.telemetry.metrics import FacadeMetrics
from autoglm.v1 import text_generation_pb2 as pb

log = logging.getLogger("autoglm.server.requests")

ANONYMOUS = "anonymous"  # the principal of insecure dev mode (no tokens)
# CountTokens checks a prompt's images like a generation does: a plan without sampling.
_NO_SAMPLING = Sampling(0, 1.0, 1.0, 0, 0, 1.0, ())


@dataclass(frozen=True, slots=True)
class Call:
    """What a front door knows of one call before its request is checked."""

    api: str  # "grpc" | "openai": a metrics label
    rpc: str  # the method: "GenerateStream", "chat.completions", …
    principal: Principal | None  # None in insecure dev mode
    timeout: float | None = None  # seconds left of the caller's deadline
    request_id: str = "-"  # the caller's raw id, for records of calls refused before the plan
    model: str = ""  # the raw model name, for metrics of calls refused before the plan


@dataclass
class Outcome:
    """What one generation did, filled in as it goes (for metrics, audit and the log)."""

    request_id: str
    code: grpc.StatusCode = grpc.StatusCode.OK
    last: pipeline.Delta | None = None
    plan: GeneratePlan | None = None
    prepared: pipeline.Prepared | None = None
    completion: list[str] | None = field(default=None, repr=False)
    reason: str | None = None  # what refused the call (a limit, a field), for the audit record
    version: int | None = None  # the model version that answered (repository models only)
    ttft: float | None = None  # seconds from the call's start to its first token


class Generations:
    """The façade's generation service behind every front door."""

    def __init__(
        self,
        registry: ModelRegistry,
        engine: EngineClient,
        *,
        metrics: FacadeMetrics,
        admission: AdmissionControl,
        audit: AuditSink | None = None,
        routes: Callable[[str], Route | None] | None = None,
        observe: Callable[[str, int, grpc.StatusCode, float | None], None] | None = None,
        adapter_refusal: Callable[[ServedAdapter, str, int], str | None] | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.metrics = metrics
        self.admission = admission
        self.audit = audit or AuditSink(None)
        # The versions a repository model serves now (ModelVersions.route; None: no repository).
        self.routes = routes or (lambda _model: None)
        # Each answered call's version, status and TTFT, for the rollback guard (canary_guard.py).
        self.observe = observe
        # Why the version that answers cannot apply an adapter (adapters.engine_refusal), or None.
        self.adapter_refusal = adapter_refusal

    def model(self, name: str, principal: Principal | None) -> ServedModel:
        # Checked before existence, so a token cannot probe which other models exist.
        if principal is not None and not principal.allows_model(name):
            raise errors.PermissionDenied(f"model: this token may not use {name!r}", field="model")
        model = self.registry.get(name)
        if model is None:
            raise errors.NotFound(
                f"model: no model named {name!r}; served: {self.registry.names()}", field="model"
            )
        return model

    def adapter(
        self, name: str, model: ServedModel, principal: Principal | None
    ) -> ServedAdapter | None:
        """The request's adapter of `model` ("" = none): PERMISSION_DENIED before NOT_FOUND, as
        for models, so a token cannot probe which adapters other tenants have."""
        if not name:
            return None
        if principal is not None and not principal.allows_adapter(name):
            raise errors.PermissionDenied(
                f"adapter: this token may not use {name!r}", field="adapter"
            )
        adapter = self.registry.adapter(name)
        if adapter is None:
            served = [a.name for a in self.visible_adapters(model.spec.name, principal)]
            raise errors.NotFound(
                f"adapter: no adapter named {name!r}; {model.spec.name}'s: {served}",
                field="adapter",
            )
        if adapter.base != model.spec.name:
            raise errors.InvalidArgument(
                [("adapter", f"{name!r} adapts {adapter.base!r}, not {model.spec.name!r}")]
            )
        return adapter

    def visible_adapters(self, model: str, principal: Principal | None) -> list[ServedAdapter]:
        """The adapters of `model` this caller may use."""
        return [
            a
            for a in self.registry.adapters.of(model)
            if principal is None or principal.allows_adapter(a.name)
        ]

    def visible_models(self, principal: Principal | None) -> Iterator[ServedModel]:
        """The served models this caller may use (all of them in insecure dev mode)."""
        return (
            m for m in self.registry if principal is None or principal.allows_model(m.spec.name)
        )

    async def count_tokens(self, call: Call, check: Callable[[], PromptInput]) -> list[int]:
        started = time.monotonic()
        out = Outcome(request_id="-")
        obs = self.metrics.request(call.model, call.rpc, call.api)
        trace_id = tracing.current_trace_id()
        facts = _take_record(call_facts.current())
        ids: list[int] = []
        try:
            self._refuse_if_unaudited()
            prompt_input = check()
            model = self.model(call.model, call.principal)
            plan = GeneratePlan("-", call.model, prompt_input, _NO_SAMPLING)
            images = await pipeline.check_request_images(plan, model)
            ids = pipeline.encode_input(model, prompt_input, images)
            return ids
        except (asyncio.CancelledError, GeneratorExit):
            out.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            out.code = errors.code_of(exc)
            out.reason = errors.reason_of(exc)
            raise
        finally:
            obs.finish(out.code)
            out.last = pipeline.Delta("", prompt_tokens=len(ids))
            self._record(out, call, started, trace_id, facts, model=call.model)

    async def generate(
        self,
        call: Call,
        check: Callable[[], GeneratePlan],
        *,
        on_prepared: Callable[[pipeline.Prepared], None] | None = None,
        on_version: Callable[[int], None] | None = None,
    ) -> AsyncIterator[pipeline.Delta]:
        """Yield the deltas of one generation (the last has finish reason and usage).

        `check` validates the front door's request into a plan; it runs inside, so that a call
        refused for a bad field is counted, logged and audited like any other. `on_prepared`
        sees the tokenized request once it is admitted, before the first delta. Exceptions are
        the domain errors of errors.py (or anything unexpected): the front door maps them.
        """
        started = time.monotonic()
        out = Outcome(request_id=call.request_id)
        obs = self.metrics.request(call.model, call.rpc, call.api)
        principal = call.principal
        ticket = None
        if self.audit.record_text:
            out.completion = []
        trace_id = tracing.current_trace_id()
        facts = _take_record(call_facts.current())
        try:
            self._refuse_if_unaudited()
            out.plan = plan = check()
            out.request_id = plan.request_id
            # Tokenized before admission: the budget admission checks is the one the engine gets
            # (the room the prompt leaves in the context can lower the model's default).
            model = self.model(plan.model, principal)
            adapter = self.adapter(plan.adapter, model, principal)
            images = await pipeline.check_request_images(plan, model)
            out.prepared = prepared = pipeline.prepare(plan, model, images, adapter)
            # The version that answers this principal: sticky while a canary runs (canary.py).
            # Chosen before admission, so that a request that version cannot serve spends no
            # quota.
            route = self.routes(plan.model)
            who = principal.name if principal else ANONYMOUS
            version = route.version_for(who) if route is not None else None
            if version is not None and adapter is not None and self.adapter_refusal is not None:
                why = self.adapter_refusal(adapter, plan.model, version)
                if why is not None:
                    raise errors.FailedPrecondition(why, field="adapter")
            ticket = await self.admission.admit(
                principal.name if principal else ANONYMOUS,
                principal.limits if principal else None,
                prepared.max_new_tokens,
                len(prepared.prompt_ids),
            )
            engine = self.engine
            if route is not None and version is not None:
                out.version = version
                if (target := route.engine_target(who)) is not None:
                    engine = VersionedEngine(self.engine, *target)
                if on_version is not None:  # the front door says which version answered
                    on_version(version)
            if on_prepared is not None:
                on_prepared(prepared)
            with tracing.generation_span(
                model=plan.model,
                request_id=plan.request_id,
                max_tokens=prepared.max_new_tokens,
                temperature=plan.sampling.temperature,
                top_p=plan.sampling.top_p,
            ) as span:
                first = True
                if out.version is not None:
                    span.set_attribute("autoglm.model_version", out.version)
                run = text_pipeline.generate_text if model.returns_text else pipeline.generate
                generation = run(prepared, engine, timeout=call.timeout)
                # One pass per delta — per coalesced message, not per token: metrics are
                # batched, and timed by the engine's arrival times carried on the delta.
                async with aclosing(generation) as deltas:
                    async for delta in deltas:
                        n = delta.tokens
                        if n:
                            if first:
                                tracing.first_token(span, timestamp_ns=_wall_ns(delta.first_at))
                                out.ttft = time.monotonic() - started
                                first = False
                            obs.tokens(n, first_at=delta.first_at, at=delta.last_at)
                        if out.completion is not None:
                            out.completion.append(delta.text)
                        out.last = delta
                        yield delta
                last = out.last
                if last is not None:
                    tracing.set_usage(
                        span, input_tokens=last.prompt_tokens, output_tokens=last.completion_tokens
                    )
                    tracing.set_finish(
                        span, [finish_name(last.finish_reason)], response_id=plan.request_id
                    )
        except (asyncio.CancelledError, GeneratorExit):
            # The caller went away (gRPC cancellation, an HTTP client closing its stream).
            out.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            if isinstance(exc, errors.ResourceExhausted):
                self.metrics.limit_rejection(exc.limit)
                tracing.annotate({"autoglm.limit": exc.limit})  # which limit refused the call
            out.code = errors.code_of(exc)
            out.reason = errors.reason_of(exc)
            raise
        finally:
            if ticket is not None:
                # Tokens per minute settle to the final usage; a call that ends without one
                # (cancelled, failed) keeps its whole reservation (security/limits.py).
                end = out.last
                final = end is not None and end.finish_reason != pb.FINISH_REASON_UNSPECIFIED
                ticket.release(end.prompt_tokens + end.completion_tokens if final else None)
            usage = out.last or pipeline.Delta("")
            obs.finish(out.code, usage.prompt_tokens, usage.completion_tokens)
            if out.version is not None and out.plan is not None and self.observe is not None:
                self.observe(out.plan.model, out.version, out.code, out.ttft)
            self._record(out, call, started, trace_id, facts)

    def _refuse_if_unaudited(self) -> None:
        refusal = self.audit.refusal()
        if refusal is not None:
            call_facts.note_reason("audit_unavailable")
            raise errors.AuditUnavailable(refusal)

    def _record(
        self,
        out: Outcome,
        call: Call,
        started: float,
        trace_id: str,
        facts: call_facts.CallFacts | None,
        *,
        model: str | None = None,
    ) -> None:
        """Log line and audit record (counts, ids, timings; text only when configured)."""
        duration = time.monotonic() - started
        last = out.last or pipeline.Delta("")
        finish = finish_name(last.finish_reason) if out.code == grpc.StatusCode.OK else None
        model = out.plan.model if out.plan else model
        log.info(
            "%s %s trace=%s model=%s status=%s prompt_tokens=%d completion_tokens=%d "
            "finish=%s duration=%.3fs",
            call.rpc,
            out.request_id,
            trace_id or "-",
            model or "-",
            out.code.name,
            last.prompt_tokens,
            last.completion_tokens,
            finish or "-",
            duration,
        )
        if not self.audit.enabled:
            return
        prompt = None
        if out.completion is not None and out.plan is not None:
            inp = out.plan.input
            prompt = inp.prompt if inp.prompt is not None else _joined(inp.messages)
        record = AuditRecord(
            request_id=out.request_id,
            rpc=call.rpc if call.api == "grpc" else f"{call.api}:{call.rpc}",
            status=out.code,
            trace_id=trace_id or None,
            model=model,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            duration_ms=round(duration * 1000, 3),
            finish_reason=finish,
            prompt=prompt,
            completion="".join(out.completion) if out.completion is not None else None,
            peer=facts.peer if facts else None,
            reason=(facts.reason if facts else None) or out.reason,
            model_version=out.version,
            adapter=(out.plan.adapter or None) if out.plan else None,
            **principal_fields(call.principal),
        )
        self.audit.submit(record)

    def close(self) -> None:
        """Drain the audit writer (after the front doors have stopped)."""
        self.audit.close()


def finish_name(reason: int) -> str:
    """The name of a FinishReason as both front doors spell it: stop, length, cancelled."""
    return pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


def _wall_ns(perf_at: float) -> int:
    """A time.perf_counter instant as time.time_ns (span event timestamps are wall clock)."""
    return time.time_ns() - int((time.perf_counter() - perf_at) * 1e9)


def _joined(messages: tuple) -> str:  # type: ignore[type-arg]
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def _take_record(facts: call_facts.CallFacts | None) -> call_facts.CallFacts | None:
    """This generation writes the call's audit record: the front door's must not."""
    if facts is not None:
        facts.recorded = True
    return facts
