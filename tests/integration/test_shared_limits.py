"""One set of books across façades: two `autoglm serve --workers 4` (8 processes) in front of one
real Triton, their per-principal limits in one real Redis (security/shared_limits.py).

Each principal's calls are spread over both façades and over their workers (one TCP connection
per channel, hashed by SO_REUSEPORT to a worker). With per-process books the 8 processes would
admit up to 8 times each quota; with the shared books a burst gets exactly the quota.

A burst is judged by its outcomes: every call either is refused (RESOURCE_EXHAUSTED at
admission) or streams its first token, and the admitted calls are held open (long generations,
none finished) until the whole burst has been answered, so no slot or rate token came back
during the burst: admitted == quota is then both "never more" and "reaches it".
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from redis import asyncio as aioredis

from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.limits import PrincipalLimits
from autoglm.server.security.shared_limits import principal_keys
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc
from tests.support.redis_server import RedisServer

from .conftest import LONG_PROMPT, MODEL

pytestmark = pytest.mark.integration

WORKERS = 4
FACADES = 2
PREFIX = "it:"
_READY = re.compile(r"(\d+) workers listening on port (\d+)")


@dataclass
class Serve:
    proc: subprocess.Popen[str]
    port: int = 0
    log: list[str] = field(default_factory=list)


def _start(args: list[str]) -> Serve:
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoglm.server.cli", "--log-format", "text", "serve", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    serve = Serve(proc)
    stderr = proc.stderr
    assert stderr is not None
    threading.Thread(target=lambda: serve.log.extend(stderr), daemon=True).start()
    return serve


def _wait_ready(serve: Serve, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for line in list(serve.log):
            if m := _READY.search(line):
                serve.port = int(m.group(2))
                return
        if serve.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("the façade did not start:\n" + "".join(serve.log[-40:]))
        time.sleep(0.05)


def _stop(serve: Serve) -> None:
    if serve.proc.poll() is None:
        serve.proc.terminate()
        try:
            serve.proc.wait(30)
        except subprocess.TimeoutExpired:
            serve.proc.kill()
            serve.proc.wait()


# The principals, each with the one quota its test is about (the others out of the way).
QUOTAS = {
    "streams": PrincipalLimits(max_streams=3, requests_per_minute=1000),
    "rate": PrincipalLimits(max_streams=1000, requests_per_minute=10),
}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


TPM_MAX_TOKENS = 200


def tpm_quota(model_dir: Path) -> int:
    """Room for 4.5 reservations of one burst request (its prompt + TPM_MAX_TOKENS): 4 admitted.
    The prompt is counted with the model's tokenizer here; a few tokens off would not matter
    (half a reservation of margin either way)."""
    from tokenizers import Tokenizer

    prompt = len(Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(LONG_PROMPT).ids)
    reserve = prompt + TPM_MAX_TOKENS
    return 4 * reserve + reserve // 2


@pytest.fixture(scope="module")
def tokens(token_store: TokenStore, model_dir: Path) -> dict[str, str]:
    """Created before the façades start, so that every worker process knows them at once
    (a token created later is unknown to a process until it re-reads the file)."""
    quotas = {
        **QUOTAS,
        "tokens": PrincipalLimits(
            max_streams=1000, requests_per_minute=1000, tokens_per_minute=tpm_quota(model_dir)
        ),
    }
    return {
        name: token_store.create(f"shared-{name}", ["generate", "models:read"], limits=limits)[0]
        for name, limits in quotas.items()
    }


@pytest.fixture(scope="module")
def facades(
    triton: TritonProcess,
    pki: DevPki,
    token_store: TokenStore,
    tokens: dict[str, str],
    model_dir: Path,
    engine_link: EngineLink,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Serve]]:
    tls = engine_link.tls
    assert tls is not None
    secret_file = engine_link.write_secret(tmp_path_factory.mktemp("link") / "triton-secret")
    args = [
        "--listen", "127.0.0.1:0",
        "--triton", triton.grpc_target,
        "--model", f"{MODEL}={MODEL}:{model_dir}",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--client-ca", str(pki.ca_cert), "--token-store", str(token_store.path),
        "--triton-ca", str(tls.ca_cert), "--triton-cert", str(tls.client_cert),
        "--triton-key", str(tls.client_key), "--triton-secret-file", str(secret_file),
        "--metrics-listen", "127.0.0.1:0",
        "--workers", str(WORKERS),
        "--limits-redis", redis_server.url,
        "--limits-redis-prefix", PREFIX,
        "--limits-replicas", str(FACADES),
        # A loaded CI machine can take longer than the 0.5 s default to open a connection
        # during a burst; that would count as the store failing (UNAVAILABLE, not counted).
        "--limits-redis-timeout", "3",
        "--grace", "1",
        # The bursts hold streams open on the one CPU engine: a health probe queued behind them
        # must not mark the engine wedged (its calls would then be UNAVAILABLE, not counted).
        "--health-probe-timeout", "60",
    ]  # fmt: skip
    started = time.monotonic()
    serves = [_start(args) for _ in range(FACADES)]  # started together: 8 processes load
    try:
        for serve in serves:
            _wait_ready(serve, timeout_s=240)
        took = time.monotonic() - started
        print(f"\n{FACADES} façades x {WORKERS} workers ready in {took:.1f} s")
        yield serves
    finally:
        for serve in serves:
            _stop(serve)


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def _channels(facades: list[Serve], pki: DevPki, per_facade: int) -> list[grpc.aio.Channel]:
    """`per_facade` channels to each façade, each its own TCP connection (a local subchannel
    pool), so that SO_REUSEPORT spreads them over the workers."""
    creds = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    return [
        grpc.aio.secure_channel(
            f"127.0.0.1:{serve.port}", creds, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(per_facade)
        for serve in facades
    ]


async def _close(channels: list[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(c.close() for c in channels))


async def _eventually(read, *, want: object, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    """Wait until `await read()` == want (polled; fails after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await read() == want:
            return
        assert time.monotonic() < deadline, f"never reached {want!r}"
        await asyncio.sleep(0.02)


def _request(max_tokens: int, prompt: str = LONG_PROMPT) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=MODEL,
        prompt=prompt,
        sampling=pb.SamplingParams(max_tokens=max_tokens, seed=1),
    )


@dataclass
class Burst:
    """How a burst of streams of one principal was answered."""

    admitted: int = 0
    refused: list[str] = field(default_factory=list)  # the refusals' messages
    held_open: bool = True  # no admitted stream had ended when the last call was answered


async def _burst(
    facades: list[Serve], pki: DevPki, token: str, request: pb.GenerateRequest, calls: int = 32
) -> Burst:
    """`calls` streams at once over 16 connections (both façades, all workers). Each is answered
    by a refusal or by its first token; the admitted ones are held open until all are answered,
    then cancelled (which releases their slots)."""
    metadata = (("authorization", f"Bearer {token}"),)
    channels = _channels(facades, pki, per_facade=8)
    burst = Burst()
    open_calls: list[grpc.aio.UnaryStreamCall] = []  # type: ignore[type-arg]
    answered = 0
    all_answered = asyncio.Event()
    release = asyncio.Event()

    def answer() -> None:
        nonlocal answered
        answered += 1
        if answered == calls:
            all_answered.set()

    async def one(channel: grpc.aio.Channel) -> None:
        call = pb_grpc.TextGenerationStub(channel).GenerateStream(
            request, metadata=metadata, timeout=120
        )
        try:
            async for response in call:
                if response.token_ids:
                    break
            burst.admitted += 1
            open_calls.append(call)
            answer()
            await release.wait()
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            burst.refused.append(err.details() or "")
            answer()
        finally:
            call.cancel()

    tasks = [asyncio.create_task(one(channels[i % len(channels)])) for i in range(calls)]
    try:
        try:
            await asyncio.wait_for(all_answered.wait(), 30)  # < 1 s when the quota holds
        except TimeoutError:
            # More admitted than the engine serves at once (books not shared): say how many.
            pytest.fail(f"not all answered in 30 s: {burst.admitted} admitted so far, {burst}")
        burst.held_open = not any(call.done() for call in open_calls)
        release.set()
        await asyncio.gather(*tasks)
    finally:
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(channels)
    return burst


async def test_concurrency_quota_holds_across_8_processes(
    facades: list[Serve], pki: DevPki, tokens: dict[str, str], raw: aioredis.Redis
) -> None:
    quota = QUOTAS["streams"].max_streams
    assert quota is not None
    leases, _ = principal_keys(PREFIX, "shared-streams")
    most = 0
    sampling = True

    async def sample_books() -> None:  # the store's own view, beside the callers'
        nonlocal most
        while sampling:
            most = max(most, await raw.zcard(leases))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample_books())
    try:
        burst = await _burst(facades, pki, tokens["streams"], _request(max_tokens=400))
        # Cancelled streams release their leases in every process.
        await _eventually(lambda: raw.zcard(leases), want=0, timeout_s=10)
    finally:
        sampling = False
        await sampler
    assert burst.held_open  # no slot came back during the burst
    assert burst.admitted == quota, burst
    assert all("limit 3 per principal" in m for m in burst.refused), burst.refused
    assert 0 < most <= quota


async def test_tokens_per_minute_quota_holds_across_8_processes(
    facades: list[Serve], pki: DevPki, tokens: dict[str, str], model_dir: Path
) -> None:
    # The bucket refills tpm/60 per second, ~16 tokens a second here: far from another
    # reservation during a burst answered within a second or so.
    tpm = tpm_quota(model_dir)
    request = _request(max_tokens=TPM_MAX_TOKENS)
    burst = await _burst(facades, pki, tokens["tokens"], request, calls=16)
    assert burst.held_open
    assert burst.admitted == 4, burst
    assert all(f"{tpm} tokens per minute" in m for m in burst.refused), burst.refused


async def test_requests_per_minute_quota_holds_across_8_processes(
    facades: list[Serve], pki: DevPki, tokens: dict[str, str]
) -> None:
    rpm = QUOTAS["rate"].requests_per_minute
    assert rpm is not None
    metadata = (("authorization", f"Bearer {tokens['rate']}"),)
    channels = _channels(facades, pki, per_facade=8)
    outcomes: list[str] = []

    async def one(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.TextGenerationStub(channel)
        try:
            await stub.Generate(_request(max_tokens=1, prompt="hi"), metadata=metadata, timeout=60)
            outcomes.append("admitted")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert f"{rpm} requests per minute" in (err.details() or "")
            outcomes.append("refused")

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(c) for c in channels * 2))  # 32 calls at once
    finally:
        await _close(channels)
    elapsed = time.monotonic() - started
    # The bucket refills rpm/60 per second (one more request after 6 s): "within one request".
    assert rpm <= outcomes.count("admitted") <= rpm + 1, (outcomes, elapsed)
