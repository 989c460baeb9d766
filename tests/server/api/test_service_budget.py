"""The servicer resolves max_tokens once: admission, the generation span and the engine request
all get the same number, for the unary and the streaming RPC alike.

The real servicer in a real grpc.aio server (plaintext on loopback, no auth interceptor: the
anonymous principal); a scripted engine stands in for Triton.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from autoglm.server.api.calls import Generations
from autoglm.server.api.service import TextGenerationService
from autoglm.server.engine.client import EngineRequest
from autoglm.server.generation.relay import Push
from autoglm.server.models import ModelRegistry, ModelSpec, load_model
from autoglm.server.security.limits import Admission, LimitSettings, PrincipalLimits, Ticket
from autoglm.server.telemetry.metrics import FacadeMetrics
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

CONTEXT = 128
# The model's default budget (256) is cut to its output cap, the room the context leaves one
# prompt token (CONTEXT - 1): more than the context leaves any real prompt.
DEFAULT = CONTEXT - 1
CEILING = 100  # tokens per request the principal may ask for: less than DEFAULT
LONG_PROMPT = "hello " * 40  # ~40 tokens: leaves less room than CEILING


class Engine:
    def __init__(self) -> None:
        self.requests: list[EngineRequest] = []

    async def stream_into(
        self, request: EngineRequest, on_ids: Push, *, timeout: float | None = None
    ) -> None:
        self.requests.append(request)
        on_ids([42] * request.max_new_tokens)


class RecordingAdmission(Admission):
    def __init__(self, settings: LimitSettings) -> None:
        super().__init__(settings)
        self.requested: list[int] = []

    async def admit(
        self,
        principal_key: str,
        limits: PrincipalLimits | None,
        requested_tokens: int,
        prompt_tokens: int = 0,
    ) -> Ticket:
        self.requested.append(requested_tokens)
        return await super().admit(principal_key, limits, requested_tokens, prompt_tokens)


@pytest.fixture
async def served(
    model_dir: Path,
) -> AsyncIterator[tuple[pb_grpc.TextGenerationStub, Engine, RecordingAdmission]]:
    spec = ModelSpec(
        name="m",
        triton_model="m",
        tokenizer_dir=model_dir,
        max_context_tokens=CONTEXT,
    )
    registry = ModelRegistry([load_model(spec)])
    engine = Engine()
    admission = RecordingAdmission(LimitSettings(max_tokens_per_request=CEILING))
    generations = Generations(
        registry,
        engine,  # type: ignore[arg-type]
        metrics=FacadeMetrics(registry.names(), process_metrics=False),
        admission=admission,
    )
    service = TextGenerationService(generations)
    server = grpc.aio.server()
    pb_grpc.add_TextGenerationServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.TextGenerationStub(channel), engine, admission
    finally:
        await server.stop(None)
        generations.close()


@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
async def test_admission_and_engine_get_the_same_budget(
    served: tuple[pb_grpc.TextGenerationStub, Engine, RecordingAdmission], rpc: str
) -> None:
    stub, engine, admission = served
    req = pb.GenerateRequest(model="m", prompt=LONG_PROMPT)  # max_tokens 0: the default
    if rpc == "Generate":
        usage = (await stub.Generate(req, timeout=10)).usage
    else:
        usage = [m async for m in stub.GenerateStream(req, timeout=10)][-1].usage
    [request] = engine.requests
    room = CONTEXT - usage.prompt_tokens
    assert room <= CEILING
    # Admitted although the model's default (DEFAULT) is above the principal's ceiling (100): the
    # request can only ever get the room its prompt leaves, and that is what was checked.
    assert admission.requested == [request.max_new_tokens] == [room]
    assert usage.completion_tokens == room


async def test_an_explicit_budget_over_the_ceiling_is_refused(
    served: tuple[pb_grpc.TextGenerationStub, Engine, RecordingAdmission],
) -> None:
    stub, engine, admission = served
    over = pb.SamplingParams(max_tokens=CEILING + 1)  # fits the context, not the ceiling
    req = pb.GenerateRequest(model="m", prompt="Hi", sampling=over)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "sampling.max_tokens" in (info.value.details() or "")
    assert admission.requested == [CEILING + 1]
    assert engine.requests == []
