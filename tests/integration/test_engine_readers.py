"""The two ways the façade reads Triton (server/engine/reader.py, the default, and a grpc.aio
call per request) against the real Triton + CPU model: same tokens, same errors, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from autoglm.bench.direct import GREEDY
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine import client as engine_client
from autoglm.server.engine.client import EngineClient, EngineRequest
from autoglm.server.engine.link import EngineLink
from autoglm.server.errors import DeadlineExceeded, EngineFailure, EngineUnavailable

from .conftest import MODEL, engine_metric

pytestmark = pytest.mark.integration

READERS = ("lean", "grpc")


@pytest.fixture(scope="module")
def prompt(model_dir: Path) -> list[int]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return tokenizer.encode("The capital of France is", add_special_tokens=False).ids


def engine(triton: TritonProcess, link: EngineLink, reader: str, **kw: object) -> EngineClient:
    link = dataclasses.replace(link, **kw)  # type: ignore[arg-type]
    return EngineClient(
        triton.grpc_target,
        credentials=link.channel_credentials(),
        metadata=link.metadata(),
        ssl_context=link.ssl_context(),
        lean_reader=reader == "lean",
    )


def request(rid: str, prompt: list[int], max_new: int, model: str = MODEL) -> EngineRequest:
    return EngineRequest(model, rid, prompt, max_new, end_id=-1, pad_id=0, sampling=GREEDY)


async def tokens(client: EngineClient, req: EngineRequest, **kw: object) -> list[int]:
    out: list[int] = []
    async with contextlib.aclosing(client.generate(req, **kw)) as stream:  # type: ignore[arg-type]
        async for ids in stream:
            out.extend(ids)
    return out


async def test_both_readers_stream_the_same_tokens(
    triton: TritonProcess, engine_link: EngineLink, prompt: list[int]
) -> None:
    got = {}
    for reader in READERS:
        client = engine(triton, engine_link, reader)
        try:
            # Four at once: on the lean reader they share one HTTP/2 connection.
            runs = await asyncio.gather(
                *(tokens(client, request(f"{reader}-{i}", prompt, 12)) for i in range(4))
            )
        finally:
            await client.close()
        assert all(r == runs[0] for r in runs)
        got[reader] = runs[0]
    assert len(got["lean"]) == 12
    assert got["lean"] == got["grpc"]


@pytest.mark.parametrize("reader", READERS)
async def test_finished_streams_end_on_tritons_status(
    triton: TritonProcess, engine_link: EngineLink, reader: str, prompt: list[int]
) -> None:
    """A call returns at its final response, then its stream ends on Triton's OK trailers
    (not by our cancel: see test_model_versions.py for why) and leaves nothing open."""
    client = engine(triton, engine_link, reader)

    def still_open() -> int:
        if reader == "grpc":
            return len(engine_client._FINISHING)
        return sum(c.open_calls for e in client._lean_endpoints.values() for c in e._connections)

    try:
        runs = await asyncio.gather(
            *(tokens(client, request(f"end-{reader}-{i}", prompt, 3)) for i in range(4))
        )
        assert [len(r) for r in runs] == [3] * 4
        deadline = time.monotonic() + 10
        while still_open():
            assert time.monotonic() < deadline, f"{still_open()} calls never ended"
            await asyncio.sleep(0.05)
    finally:
        await client.close()


@pytest.mark.parametrize("reader", READERS)
async def test_errors_map_the_same(
    triton: TritonProcess, engine_link: EngineLink, reader: str, prompt: list[int]
) -> None:
    client = engine(triton, engine_link, reader)
    try:
        # Triton answers an unknown model with an error response on the stream.
        with pytest.raises(EngineFailure, match="no-such-model"):
            await tokens(client, request("unknown-model", prompt, 2, model="no-such-model"))
        with pytest.raises(DeadlineExceeded):
            await tokens(client, request("deadline", prompt, 500), timeout=0.3)
    finally:
        await client.close()
    wrong_secret = engine(triton, engine_link, reader, secret="not-the-secret")
    try:
        # The restricted protocol refuses a call without the right header.
        with pytest.raises((EngineFailure, EngineUnavailable)) as err:
            await tokens(wrong_secret, request("secret", prompt, 2))
        assert "not-the-secret" not in str(err.value)
    finally:
        await wrong_secret.close()


@pytest.mark.parametrize("reader", READERS)
async def test_leaving_early_cancels_the_engine_request(
    triton: TritonProcess, engine_link: EngineLink, reader: str, prompt: list[int]
) -> None:
    metric = "autoglm_engine_requests_total"
    before = engine_metric(triton, metric, outcome="cancelled")
    client = engine(triton, engine_link, reader)
    try:
        received = 0
        req = request(f"leave-{reader}", prompt, 500)
        async with contextlib.aclosing(client.generate(req)) as s:
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
