"""The façade's reader of Triton (reader.py) against the real Triton + CPU model: the tokens a
grpc.aio consumer (an independent HTTP/2 and gRPC implementation) reads, Triton's errors
mapped, finished streams left to end on Triton's status, cancellation reaching the engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import grpc
import pytest
from tokenizers import Tokenizer
from tritonclient.grpc import service_pb2_grpc

from autoglm.bench.direct import GREEDY
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.client import (
    EngineClient,
    EngineRequest,
    build_infer_request,
    parse_stream_response,
)
from autoglm.server.engine.link import EngineLink
from autoglm.server.errors import DeadlineExceeded, EngineFailure, EngineUnavailable

from .conftest import MODEL, engine_metric

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prompt(model_dir: Path) -> list[int]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return tokenizer.encode("The capital of France is", add_special_tokens=False).ids


def engine(triton: TritonProcess, link: EngineLink, **kw: object) -> EngineClient:
    link = dataclasses.replace(link, **kw)  # type: ignore[arg-type]
    return EngineClient(
        triton.grpc_target,
        credentials=link.channel_credentials(),
        metadata=link.metadata(),
        ssl_context=link.ssl_context(),
    )


def request(rid: str, prompt: list[int], max_new: int, model: str = MODEL) -> EngineRequest:
    return EngineRequest(model, rid, prompt, max_new, end_id=-1, pad_id=0, sampling=GREEDY)


async def tokens(client: EngineClient, req: EngineRequest, **kw: object) -> list[int]:
    out: list[int] = []
    async with contextlib.aclosing(client.generate(req, **kw)) as stream:  # type: ignore[arg-type]
        async for ids in stream:
            out.extend(ids)
    return out


async def grpc_aio_tokens(triton: TritonProcess, link: EngineLink, req: EngineRequest) -> list[int]:
    """The same request read by grpc.aio, to its final response and Triton's status."""
    channel = link.aio_channel(triton.grpc_target)
    try:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            metadata=link.metadata()
        )
        await call.write(build_infer_request(req))
        await call.done_writing()
        out: list[int] = []
        async for resp in call:
            ids, final = parse_stream_response(resp)
            out.extend(ids)
            if final:
                break
        assert await call.code() == grpc.StatusCode.OK
        return out
    finally:
        await channel.close()


async def test_the_reader_streams_what_grpc_aio_reads(
    triton: TritonProcess, engine_link: EngineLink, prompt: list[int]
) -> None:
    client = engine(triton, engine_link)
    try:
        # Four at once: they share one HTTP/2 connection.
        runs = await asyncio.gather(
            *(tokens(client, request(f"reader-{i}", prompt, 12)) for i in range(4))
        )
        assert len(client._readers) == 1
        (endpoint,) = client._readers.values()
        assert len(endpoint._connections) == 1
    finally:
        await client.close()
    reference = await grpc_aio_tokens(triton, engine_link, request("grpc-aio", prompt, 12))
    assert len(reference) == 12
    assert all(run == reference for run in runs)


async def test_finished_streams_end_on_tritons_status(
    triton: TritonProcess, engine_link: EngineLink, prompt: list[int]
) -> None:
    """A call returns at its final response, then its stream ends on Triton's OK trailers
    (not by our cancel: see test_model_versions.py for why) and leaves nothing open."""
    client = engine(triton, engine_link)

    def still_open() -> int:
        return sum(c.open_calls for e in client._readers.values() for c in e._connections)

    try:
        runs = await asyncio.gather(
            *(tokens(client, request(f"end-{i}", prompt, 3)) for i in range(4))
        )
        assert [len(r) for r in runs] == [3] * 4
        deadline = time.monotonic() + 10
        while still_open():
            assert time.monotonic() < deadline, f"{still_open()} calls never ended"
            await asyncio.sleep(0.05)
    finally:
        await client.close()


async def test_errors_map_to_the_facades(
    triton: TritonProcess, engine_link: EngineLink, prompt: list[int]
) -> None:
    client = engine(triton, engine_link)
    try:
        # Triton answers an unknown model with an error response on the stream: a model that is
        # not loaded (stream_errors.py), so UNAVAILABLE, which callers retry.
        with pytest.raises(EngineUnavailable, match="no-such-model"):
            await tokens(client, request("unknown-model", prompt, 2, model="no-such-model"))
        with pytest.raises(DeadlineExceeded):
            await tokens(client, request("deadline", prompt, 500), timeout=0.3)
    finally:
        await client.close()
    wrong_secret = engine(triton, engine_link, secret="not-the-secret")
    try:
        # The restricted protocol refuses a call without the right header.
        with pytest.raises((EngineFailure, EngineUnavailable)) as err:
            await tokens(wrong_secret, request("secret", prompt, 2))
        assert "not-the-secret" not in str(err.value)
    finally:
        await wrong_secret.close()


async def test_leaving_early_cancels_the_engine_request(
    triton: TritonProcess, engine_link: EngineLink, prompt: list[int]
) -> None:
    metric = "autoglm_engine_requests_total"
    before = engine_metric(triton, metric, outcome="cancelled")
    client = engine(triton, engine_link)
    try:
        received = 0
        async with contextlib.aclosing(client.generate(request("leave", prompt, 500))) as s:
            async for ids in s:
                received += len(ids)
                if received >= 2:
                    break
        deadline = time.monotonic() + 30
        while engine_metric(triton, metric, outcome="cancelled") < before + 1:
            assert time.monotonic() < deadline, "Triton never cancelled the request"
            await asyncio.sleep(0.2)
    finally:
        await client.close()
