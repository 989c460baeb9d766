"""The autoglm.v1.TextGeneration servicer: proto request → plan → `Generations` → messages.

The generation itself (model permission, tokenization, admission, span, metrics, audit) is
calls.py's, shared with the OpenAI-compatible front door. Here: validating the proto request
into a plan, building response messages, and mapping errors to gRPC statuses (errors.py).

Both generation RPCs run through one code path (`_generate`), so the streamed text always
concatenates to the unary text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from autoglm.server import errors
from autoglm.server.api.calls import Call, Generations
from autoglm.server.api.validation import validate_count_tokens, validate_generate
from autoglm.server.generation import pipeline
from autoglm.server.security.auth import current_principal
from autoglm.server.telemetry import tracing
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

# The trailer naming the model version that answered a generation (a canary's or the stable one).
VERSION_TRAILER = "x-autoglm-model-version"


class TextGenerationService(pb_grpc.TextGenerationServicer):
    def __init__(self, generations: Generations) -> None:
        self.generations = generations

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        text: list[str] = []
        ids: list[int] = []
        logprobs: list[float] = []
        last = pipeline.Delta("")
        rid = ""
        async with aclosing(self._generate(request, context, "Generate")) as deltas:
            async for request_id, delta in deltas:
                rid = request_id
                text.append(delta.text)
                ids.extend(delta.token_ids)
                logprobs.extend(delta.logprobs)
                last = delta
        return pb.GenerateResponse(
            request_id=rid,
            model=request.model,
            text="".join(text),
            token_ids=ids,
            logprobs=logprobs,
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
                if delta.logprobs:
                    msg.logprobs.extend(delta.logprobs)
                if delta.finish_reason:
                    msg.finish_reason = delta.finish_reason
                    msg.usage.prompt_tokens = delta.prompt_tokens
                    msg.usage.completion_tokens = delta.completion_tokens
                yield msg

    async def _generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, rpc: str
    ) -> AsyncIterator[tuple[str, pipeline.Delta]]:
        trace_id = tracing.current_trace_id()
        trailers: tuple[tuple[str, str], ...] = (("x-trace-id", trace_id),) if trace_id else ()
        if trailers:
            context.set_trailing_metadata(trailers)

        def on_version(version: int) -> None:  # which model version answered (canary.py)
            context.set_trailing_metadata((*trailers, (VERSION_TRAILER, str(version))))

        call = Call(
            api="grpc",
            rpc=rpc,
            principal=current_principal(),
            timeout=context.time_remaining(),
            request_id=request.request_id or "-",
            model=request.model,
        )
        rid = call.request_id

        def check():  # type: ignore[no-untyped-def]
            nonlocal rid
            plan = validate_generate(request)
            rid = plan.request_id
            return plan

        try:
            generation = self.generations.generate(call, check, on_version=on_version)
            async with aclosing(generation) as deltas:
                async for delta in deltas:
                    yield rid, delta
        except Exception as exc:
            status = errors.status_for(exc, request_id=rid)
            tracing.record_status(status.code)
            await context.abort_with_status(status)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        principal = current_principal()
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=m.spec.name,
                    engine=m.spec.engine,
                    max_context_tokens=m.limits.max_context,
                    max_output_tokens=m.limits.max_output,
                    default_max_tokens=m.limits.default_max_tokens,
                    has_chat_template=m.encoder.has_chat_template,
                    max_images=m.vision.limits.max_images if m.vision else 0,
                    max_image_bytes=m.vision.limits.max_bytes if m.vision else 0,
                    max_prompt_tokens=m.limits.max_input,
                    adapters=[
                        a.name for a in self.generations.visible_adapters(m.spec.name, principal)
                    ],
                )
                for m in self.generations.visible_models(principal)
            ]
        )

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        call = Call(
            api="grpc", rpc="CountTokens", principal=current_principal(), model=request.model
        )
        try:
            ids = await self.generations.count_tokens(call, lambda: validate_count_tokens(request))
        except Exception as exc:
            status = errors.status_for(exc, request_id="-")
            tracing.record_status(status.code)
            await context.abort_with_status(status)
            raise AssertionError("unreachable") from None
        return pb.CountTokensResponse(model=request.model, prompt_tokens=len(ids), token_ids=ids)
