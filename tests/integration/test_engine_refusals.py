"""Numbers the engine cannot sample end INVALID_ARGUMENT naming the field, never INTERNAL —
against the real Triton and the real CPU model (SmolLM2), from three callers:

- Triton directly (any tool that reaches it): the CPU engine refuses with Triton's INVALID_ARG
  and a message naming the tensor. On ModelStreamInfer Triton keeps that code only for a caller
  that sends `triton_grpc_error: true` (the stream then ends with gRPC INVALID_ARGUMENT); for
  everyone else it drops the code and sends the text as the response's `error_message`.
- the façade's engine client + pipeline (both ways the refusal can arrive): the
  caller's InvalidArgument names the request field, e.g. `sampling.repetition_penalty`.
- the façade, as `autoglm-client --temperature 1e-45` / `--repetition-penalty 1e-45` call it:
  the first is greedy (vLLM's rule below 1e-5), the second INVALID_ARGUMENT. Both once ended
  INTERNAL with torch's "probability tensor contains either `inf`, `nan` or element < 0".
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

from autoglm.client import Client, InvalidArgumentError
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.client import (
    EngineClient,
    EngineRequest,
    EngineSampling,
    build_infer_request,
)
from autoglm.server.engine.link import EngineLink
from autoglm.server.errors import InvalidArgument
from autoglm.server.generation import pipeline
from autoglm.server.generation.plan import GeneratePlan, PromptInput, Sampling
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.triton_models.refusal import parse_refusal

from .conftest import MODEL, engine_metric

pytestmark = pytest.mark.integration

KEEP_CODE = ("triton_grpc_error", "true")  # Triton ≥ 24.08: errors as gRPC status codes
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def served(model_dir: Path) -> ServedModel:
    return load_model(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir))


def engine_request(served: ServedModel, **sampling: float) -> EngineRequest:
    values = {
        "temperature": 1.0,
        "runtime_top_k": 0,
        "runtime_top_p": 1.0,
        "seed": 1,
        "repetition_penalty": 1.0,
        **sampling,
    }
    return EngineRequest(
        triton_model=MODEL,
        request_id="refusal",
        input_ids=served.encoder.encode_prompt(PROMPT),
        max_new_tokens=2,
        end_id=served.end_id,
        pad_id=served.pad_id,
        sampling=EngineSampling(**values),  # type: ignore[arg-type]
    )


async def test_triton_keeps_the_code_only_when_asked(
    triton: TritonProcess, engine_link: EngineLink, served: ServedModel
) -> None:
    req = build_infer_request(engine_request(served, repetition_penalty=1e-45))
    rejected = engine_metric(triton, "autoglm_engine_requests_total", outcome="rejected")
    async with engine_link.aio_channel(triton.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # Default: the stream ends OK; the refusal is the text of the one response.
        call = stub.ModelStreamInfer(iter([req]), metadata=engine_link.metadata(), timeout=30)
        responses = [r async for r in call]
        assert await call.code() == grpc.StatusCode.OK
        [response] = responses
        refusal = parse_refusal(response.error_message)
        assert refusal is not None and refusal.tensor == "repetition_penalty"
        assert refusal.reason.endswith("got 1.401298464324817e-45")  # FP32 1e-45
        # With the header: gRPC INVALID_ARGUMENT, the same text.
        metadata = (*engine_link.metadata(), KEEP_CODE)
        call = stub.ModelStreamInfer(iter([req]), metadata=metadata, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in call]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "invalid input tensor 'repetition_penalty'" in (info.value.details() or "")
    after = engine_metric(triton, "autoglm_engine_requests_total", outcome="rejected")
    assert after - rejected == 2  # counted as refused by the engine, not as failed


async def test_a_denormal_temperature_is_greedy_in_the_engine(
    triton: TritonProcess, engine_link: EngineLink, served: ServedModel
) -> None:
    """Sent straight to Triton as the FP32 tensor value 1e-45: greedy, not logits / 1e-45."""
    client = _engine(triton, engine_link)
    try:
        denormal = await _tokens(client, engine_request(served, temperature=1e-45))
        greedy = await _tokens(client, engine_request(served, runtime_top_k=1))
    finally:
        await client.close()
    assert denormal == greedy
    assert len(denormal) == 2


def _engine(triton: TritonProcess, link: EngineLink, *extra: tuple[str, str]) -> EngineClient:
    return EngineClient(
        triton.grpc_target,
        credentials=link.channel_credentials(),
        metadata=(*link.metadata(), *extra),
        ssl_context=link.ssl_context(),
    )


async def _tokens(client: EngineClient, req: EngineRequest) -> list[int]:
    out: list[int] = []
    async with contextlib.aclosing(client.generate(req, timeout=60)) as stream:
        async for ids in stream:
            out.extend(ids)
    return out


@pytest.mark.parametrize("keep_code", [False, True], ids=["error_message", "grpc_status"])
async def test_the_pipeline_names_the_request_field(
    triton: TritonProcess,
    engine_link: EngineLink,
    served: ServedModel,
    keep_code: bool,
) -> None:
    """A plan that skipped the façade's validation (the engine is the last line): the refusal
    arrives as a stream error or as gRPC INVALID_ARGUMENT, and either way becomes the caller's
    InvalidArgument on `sampling.repetition_penalty`."""
    plan = GeneratePlan(
        request_id="skipped-validation",
        model=MODEL,
        input=PromptInput(prompt=PROMPT, messages=()),
        sampling=Sampling(
            max_tokens=2,
            temperature=0.7,
            top_p=1.0,
            top_k=0,
            seed=1,
            repetition_penalty=1e-45,
            stop=(),
        ),
    )
    client = _engine(triton, engine_link, *((KEEP_CODE,) if keep_code else ()))
    try:
        prepared = pipeline.prepare(plan, served)
        with pytest.raises(InvalidArgument) as info:
            _ = [d async for d in pipeline.generate(prepared, client, timeout=60)]
    finally:
        await client.close()
    [(field, description)] = info.value.violations
    assert field == "sampling.repetition_penalty"
    assert "repetition_penalty" in description


def test_the_facade_serves_a_denormal_temperature_greedily(client: Client) -> None:
    denormal = client.generate(PROMPT, max_tokens=3, temperature=1e-45, seed=5)
    greedy = client.generate(PROMPT, max_tokens=3, temperature=0.0, seed=6)
    assert denormal.token_ids == greedy.token_ids
    assert denormal.finish_reason in ("length", "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_the_facade_refuses_a_denormal_repetition_penalty(client: Client, stream: bool) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        if stream:
            list(client.generate_stream(PROMPT, max_tokens=3, repetition_penalty=1e-45))
        else:
            client.generate(PROMPT, max_tokens=3, repetition_penalty=1e-45)
    [(field, description)] = info.value.field_violations
    assert field == "sampling.repetition_penalty"
    assert "sampling.repetition_penalty" in str(info.value)
    assert "0.01" in description
