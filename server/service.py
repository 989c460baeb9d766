"""The autoglm.v1.TextGeneration servicer: validate → pipeline → messages, errors mapped once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from autoglm.server import errors, pipeline
from autoglm.server.auth import current_principal
from autoglm.server.engine_client import EngineClient
from autoglm.server.models import ModelRegistry, ServedModel
from autoglm.server.validation import validate_count_tokens, validate_generate
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

log = logging.getLogger("autoglm.server.requests")


class TextGenerationService(pb_grpc.TextGenerationServicer):
    def __init__(self, registry: ModelRegistry, engine: EngineClient) -> None:
        self.registry = registry
        self.engine = engine

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
        rid = request.request_id or "-"
        started = time.monotonic()
        try:
            plan = validate_generate(request)
            rid = plan.request_id
            model = self._model(plan.model)
            text: list[str] = []
            ids: list[int] = []
            last = pipeline.Delta("")
            async for delta in pipeline.generate(
                plan, model, self.engine, timeout=context.time_remaining()
            ):
                text.append(delta.text)
                ids.extend(delta.token_ids)
                last = delta
            _log_done("Generate", rid, plan.model, last, started)
            return pb.GenerateResponse(
                request_id=rid,
                model=plan.model,
                text="".join(text),
                token_ids=ids,
                finish_reason=last.finish_reason,
                usage=pb.Usage(
                    prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens
                ),
            )
        except asyncio.CancelledError:
            log.info(
                "Generate %s cancelled by the caller after %.3f s", rid, time.monotonic() - started
            )
            raise
        except Exception as exc:
            await _abort(context, exc, rid)
            raise AssertionError("unreachable") from None

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        rid = request.request_id or "-"
        started = time.monotonic()
        try:
            plan = validate_generate(request)
            rid = plan.request_id
            model = self._model(plan.model)
            async for delta in pipeline.generate(
                plan, model, self.engine, timeout=context.time_remaining()
            ):
                msg = pb.GenerateResponse(
                    request_id=rid, model=plan.model, text=delta.text, token_ids=delta.token_ids
                )
                if delta.finish_reason:
                    msg.finish_reason = delta.finish_reason
                    msg.usage.prompt_tokens = delta.prompt_tokens
                    msg.usage.completion_tokens = delta.completion_tokens
                    _log_done("GenerateStream", rid, plan.model, delta, started)
                yield msg
        except asyncio.CancelledError:
            log.info(
                "GenerateStream %s cancelled by the caller after %.3f s",
                rid,
                time.monotonic() - started,
            )
            raise
        except Exception as exc:
            await _abort(context, exc, rid)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
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
                if (principal := current_principal()) is None or principal.allows_model(m.spec.name)
            ]
        )

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        try:
            prompt_input = validate_count_tokens(request)
            model = self._model(request.model)
            ids = pipeline.encode_input(model, prompt_input)
            return pb.CountTokensResponse(
                model=request.model, prompt_tokens=len(ids), token_ids=ids
            )
        except Exception as exc:
            await _abort(context, exc, "-")
            raise AssertionError("unreachable") from None


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, rid: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    status = errors.status_for(exc, request_id=rid)
    log.info("request %s failed: %s", rid, status.code.name)
    await context.abort_with_status(status)


def _log_done(rpc: str, rid: str, model: str, last: pipeline.Delta, started: float) -> None:
    # Counts and timings only: prompts and completions are not logged.
    log.info(
        "%s %s model=%s prompt_tokens=%d completion_tokens=%d finish=%s duration=%.3fs",
        rpc,
        rid,
        model,
        last.prompt_tokens,
        last.completion_tokens,
        pb.FinishReason.Name(last.finish_reason),
        time.monotonic() - started,
    )
