"""Hostile input, as an outside caller sends it: random requests never end INTERNAL.

Every request goes over the real wire — gRPC with mTLS and a bearer token, the generated stubs
any language would use — into the real façade and the real Triton (fuzz_requests.py draws them,
with the extremes of every numeric field):

- 10,000 to a façade (subprocess, as deployed) in front of Triton hosting the SYNTHETIC engine
  (the tensor contract and the CPU engine's request parser, no model compute): the volume;
- 600 to the package façade in front of the real CPU model (SmolLM2), which divides the
  logits by temperature and repetition penalty — where 1e-45 once ended INTERNAL;
- 400 random byte strings as request bodies of every method.

Every outcome is checked against the API contract (fuzz_requests.contract_violations, an oracle
independent of the façade's validation): never INTERNAL or UNKNOWN; a request the contract
calls invalid gets INVALID_ARGUMENT whose google.rpc.BadRequest names exactly those fields, and
whose message names each; an unknown model NOT_FOUND naming `model`; anything else finishes
(finish reason set, no more tokens than asked) or fails only on what the prompt's tokens decide
(INVALID_ARGUMENT on prompt / messages / sampling.max_tokens: context room, chat template).
Accepted requests mostly ask for one token (a few for the default 256 or the maximum 1,024), so
on 2 cores the 10,000 take 25–40 s and the 600 real ones ~27 s (both printed with -s).
Seeded; AUTOGLM_FUZZ_SEED=<n> replays another run.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from autoglm.bench.stack import EngineModel, StackOptions
from autoglm.server.devstack.pki import DevPki
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.limits import PrincipalLimits
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

from .conftest import MODEL, Facade, secure_channel
from .fuzz_requests import MAX_OUTPUT_TOKENS, Target, contract_violations, random_request
from .synthetic_stack import FacadeStack, cycle_ids

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYNTH = "synthetic-fuzz"
SYNTH_REQUESTS = 10_000
REAL_REQUESTS = 600  # ~40 % accepted, ~0.1 s of CPU each: ~25 s
SEED = int(os.environ.get("AUTOGLM_FUZZ_SEED", "20261121"))
DEFAULT_BUDGET = 256  # ModelInfo.default_max_tokens of both models (max_tokens 0)
# Fields whose error depends on how the prompt tokenizes (context room, chat template).
PROMPT_FIELDS = {"prompt", "messages", "sampling.max_tokens"}
CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Outcome:
    index: int
    request: pb.GenerateRequest
    streaming: bool
    code: grpc.StatusCode
    details: str
    fields: tuple[str, ...]  # BadRequest field violations
    messages: tuple[pb.GenerateResponse, ...]


def _fields(err: grpc.aio.AioRpcError) -> tuple[str, ...]:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)  # type: ignore[arg-type]
            out: list[str] = []
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    out.extend(v.field for v in bad.field_violations)
            return tuple(out)
    return ()


async def _call(
    stub: pb_grpc.TextGenerationStub,
    metadata: tuple[tuple[str, str], ...],
    index: int,
    req: pb.GenerateRequest,
    streaming: bool,
) -> Outcome:
    messages: tuple[pb.GenerateResponse, ...] = ()
    try:
        if streaming:
            call = stub.GenerateStream(req, metadata=metadata, timeout=CALL_TIMEOUT_S)
            messages = tuple([m async for m in call])
        else:
            messages = (await stub.Generate(req, metadata=metadata, timeout=CALL_TIMEOUT_S),)
    except grpc.aio.AioRpcError as err:
        return Outcome(index, req, streaming, err.code(), err.details() or "", _fields(err), ())
    return Outcome(index, req, streaming, grpc.StatusCode.OK, "", (), messages)


async def fuzz(
    endpoint: str,
    pki: DevPki,
    token: str,
    target: Target,
    *,
    count: int,
    seed: int,
    concurrency: int,
) -> list[Outcome]:
    """`count` random requests, `concurrency` at a time, over one mTLS channel."""
    rng = random.Random(seed)
    work = [(i, random_request(rng, target), rng.random() < 0.5) for i in range(count)]
    creds = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    metadata = (("authorization", f"Bearer {token}"),)
    outcomes: list[Outcome] = []
    async with grpc.aio.secure_channel(endpoint, creds) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        queue = iter(work)

        async def worker() -> None:
            for index, req, streaming in queue:
                outcomes.append(await _call(stub, metadata, index, req, streaming))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(outcomes, key=lambda o: o.index)


def check(outcome: Outcome, served: str) -> str | None:
    """What is wrong with this outcome under the API contract, or None."""
    req, code = outcome.request, outcome.code
    expected = contract_violations(req)
    named = all(f in outcome.details for f in outcome.fields)
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"{code.name}: {outcome.details}"
    if expected:
        if code != grpc.StatusCode.INVALID_ARGUMENT or set(outcome.fields) != expected:
            return f"expected INVALID_ARGUMENT on {sorted(expected)}, got {code.name} {outcome}"
        return None if named else f"fields not named in the message: {outcome.details}"
    if req.model != served:
        ok = code == grpc.StatusCode.NOT_FOUND and "model" in outcome.details
        return None if ok else f"expected NOT_FOUND naming model, got {code.name}"
    if req.sampling.max_tokens > MAX_OUTPUT_TOKENS:
        ok = code == grpc.StatusCode.INVALID_ARGUMENT and outcome.fields == ("sampling.max_tokens",)
        return None if ok and named else f"expected max_tokens refused, got {outcome}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        ok = set(outcome.fields) <= PROMPT_FIELDS and outcome.fields and named
        return None if ok else f"valid request refused: {outcome}"
    if code != grpc.StatusCode.OK:
        return f"valid request ended {code.name}: {outcome.details}"
    last = outcome.messages[-1]
    budget = req.sampling.max_tokens or DEFAULT_BUDGET
    if last.finish_reason not in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH):
        return f"finished without a finish reason: {outcome}"
    if any(m.finish_reason for m in outcome.messages[:-1]):
        return f"a finish reason before the last message: {outcome}"
    if not 0 <= last.usage.completion_tokens <= budget:
        return f"{last.usage.completion_tokens} tokens for max_tokens {budget}"
    return None


def report(name: str, outcomes: list[Outcome], seconds: float, served: str, seed: int) -> None:
    codes = Counter(o.code.name for o in outcomes)
    problems = [(o, p) for o in outcomes if (p := check(o, served)) is not None]
    print(
        f"\n{name}: {len(outcomes)} requests in {seconds:.1f} s "
        f"({len(outcomes) / seconds:.0f}/s), seed {seed}: {dict(codes.most_common())}"
    )
    assert not problems, "\n".join(f"#{o.index} {p}\n{o.request}" for o, p in problems[:10])


# ---- the volume: the synthetic engine ----------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_stack(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[FacadeStack]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    opts = StackOptions(
        workdir=tmp_path_factory.mktemp("fuzz"),
        tokenizer_dir=model_dir,
        models=(EngineModel(SYNTH, 0.0),),  # unpaced
        token_ids=cycle_ids(tokenizer),
    )
    with FacadeStack(opts) as stack:  # admission limits lifted: no RESOURCE_EXHAUSTED
        yield stack


async def test_ten_thousand_random_requests(synthetic_stack: FacadeStack) -> None:
    target = Target(SYNTH, budgets=(1,) * 40 + (2,) * 6 + (0, 0, MAX_OUTPUT_TOKENS))
    started = time.monotonic()
    outcomes = await fuzz(
        synthetic_stack.facade_endpoint,
        synthetic_stack.pki,
        synthetic_stack.token,
        target,
        count=SYNTH_REQUESTS,
        seed=SEED,
        concurrency=16,
    )
    report("synthetic engine", outcomes, time.monotonic() - started, SYNTH, SEED)
    assert sum(o.code == grpc.StatusCode.OK for o in outcomes) > SYNTH_REQUESTS // 10


# ---- the real CPU model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_token(facade: Facade, pki: DevPki, token_store: TokenStore) -> str:
    """A principal of its own with room for the fuzz (no rate-limit refusals); waits until the
    façade's token store (reloaded within a second) knows it."""
    token, _ = token_store.create(
        "fuzzer",
        ["generate", "models:read"],
        limits=PrincipalLimits(max_streams=64, requests_per_minute=1_000_000),
    )
    md = (("authorization", f"Bearer {token}"),)
    with secure_channel(facade.endpoint, pki) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        _wait_until(
            lambda: _accepted(
                lambda: stub.ListModels(pb.ListModelsRequest(), metadata=md, timeout=5)
            ),
            10,
        )
    return token


def _accepted(call: Callable[[], object]) -> bool:
    try:
        call()
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            return False
        raise
    return True


def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.05)


async def test_random_requests_to_the_real_model(
    facade: Facade, pki: DevPki, fuzz_token: str
) -> None:
    # Only one-token budgets here: the default (256 tokens) costs seconds of CPU per request.
    target = Target(MODEL, budgets=(1,))
    started = time.monotonic()
    outcomes = await fuzz(
        facade.endpoint, pki, fuzz_token, target, count=REAL_REQUESTS, seed=SEED + 1, concurrency=8
    )
    report("real CPU model", outcomes, time.monotonic() - started, MODEL, SEED + 1)
    accepted = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    assert len(accepted) > REAL_REQUESTS // 10
    # Reached the engine with the numbers that once failed there (greedy below 1e-5).
    tiny = [o for o in accepted if 0 < o.request.sampling.temperature < 1e-5]
    assert tiny, "no accepted request had a near-zero temperature"


# ---- random bytes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bytes_channel(
    facade: Facade, pki: DevPki, fuzz_token: str
) -> Iterator[tuple[grpc.Channel, tuple[tuple[str, str], ...]]]:
    with secure_channel(facade.endpoint, pki) as channel:
        yield channel, (("authorization", f"Bearer {fuzz_token}"),)


def _code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    payload=st.binary(max_size=200),
    method=st.sampled_from(["Generate", "GenerateStream", "CountTokens", "ListModels"]),
)
def test_random_bytes_never_fail_internally(
    bytes_channel: tuple[grpc.Channel, tuple[tuple[str, str], ...]], payload: bytes, method: str
) -> None:
    channel, md = bytes_channel
    path = f"/autoglm.v1.TextGeneration/{method}"
    if method == "GenerateStream":
        code = _code_of(lambda: list(channel.unary_stream(path)(payload, metadata=md, timeout=30)))
    else:
        code = _code_of(lambda: channel.unary_unary(path)(payload, metadata=md, timeout=30))
    # A body that parses can be a valid request (ListModels, or a Generate of the real model).
    assert code in {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }, (
        code,
        payload,
    )


def test_server_is_healthy_after_the_fuzzing(facade: Facade, pki: DevPki, fuzz_token: str) -> None:
    with secure_channel(facade.endpoint, pki) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
