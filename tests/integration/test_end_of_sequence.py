"""End-of-sequence ids and prompt limits from the model, against the real Triton, the real CPU
engine (SmolLM2) and the real façade over gRPC and the OpenAI front door.

- A generation ends on a *non-first* end-of-sequence id. A copy of the SmolLM2 folder whose
  generation_config.json lists [0, 2] (<|endoftext|>, which this answer never produces, then
  <|im_end|>) plays Llama-3.1-Instruct, whose turns end with its third id: the engine gets
  end_id 0 and the stop word [2], stops on it, and the answer is the one the plain model
  (end_id 2) gives, with neither the id in `token_ids` nor its text, nor a count in usage.
  Asked with the agent's max_tokens (3000), which SmolLM2's 8192-token context now allows.
- The engine's prompt limit (`max_input_len`, as a TensorRT-LLM build's): the CPU engine refuses
  a longer prompt naming `input_ids` and the numbers; a façade that knows the limit (from a
  version's manifest) refuses it first, naming the numbers, without reaching the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import openai
import pytest

from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.model_limits import EngineLimits
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings import Settings, TlsSettings
from autoglm.triton_models.repository import CpuEngineConfig, render_cpu_model
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

from .conftest import Facade, FacadeThread, _wait_serving, engine_metric, secure_channel
from .openai_sdk import sdk, sdk_error

pytestmark = pytest.mark.integration

ENGINE = "smollm2-input-limited"  # the Triton model: SmolLM2 with max_input_len
INPUT_LIMIT = 48
TWO_ENDS = "two-ends"  # façade model: generation_config eos_token_id [0, 2]
PLAIN = "plain"  # façade model: the real folder (eos 2)
KNOWS_LIMIT = "knows-limit"  # façade model told the engine's limit (as a manifest tells it)
FIRST, TURN_END = 0, 2  # <|endoftext|>, <|im_end|>
# Greedy, SmolLM2 answers "The capital of France is Paris." in 7 tokens, then <|im_end|>.
QUESTION = "What is the capital of France?"
AGENT_MAX_TOKENS = 3000  # what the Open-AutoGLM agent asks for (issue #22)
GENERATED = "autoglm_engine_generated_tokens_total"
OUTCOMES = "autoglm_engine_requests_total"


@pytest.fixture(scope="module")
def triton(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, engine_link: EngineLink
) -> Iterator[TritonProcess]:
    """A Triton of this module's own: the CPU engine rendered with an input limit."""
    repo = tmp_path_factory.mktemp("triton-eos") / "model_repository"
    render_cpu_model(
        repo, CpuEngineConfig(model_name=ENGINE, hf_model_dir=model_dir, max_input_len=INPUT_LIMIT)
    )
    proc = TritonProcess(
        TritonOptions(model_repository=repo, models=(ENGINE,), exit_timeout_s=5, link=engine_link)
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def two_ends_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """The SmolLM2 folder (every file linked) with eos_token_id [0, 2] in generation_config."""
    folder = tmp_path_factory.mktemp("two-ends")
    for item in model_dir.iterdir():
        if item.name != "generation_config.json":
            (folder / item.name).symlink_to(item)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    generation["eos_token_id"] = [FIRST, TURN_END]
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


@pytest.fixture(scope="module")
def facade(
    triton: TritonProcess,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    model_dir: Path,
    two_ends_dir: Path,
) -> Iterator[Facade]:
    built = EngineLimits(max_input_len=INPUT_LIMIT, max_seq_len=8192, source="test manifest")
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(
            ModelSpec(name=TWO_ENDS, triton_model=ENGINE, tokenizer_dir=two_ends_dir),
            ModelSpec(name=PLAIN, triton_model=ENGINE, tokenizer_dir=model_dir),
            ModelSpec(
                name=KNOWS_LIMIT, triton_model=ENGINE, tokenizer_dir=model_dir, engine_limits=built
            ),
        ),
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=token_store.path,
        engine_link=engine_link,
        # One deep-health round at start, then none during the tests: its one-token probes
        # would add to the engine's token counter the tests read.
        health_interval_s=3600,
        health_listen="127.0.0.1:0",
        metrics_listen=None,
        openai_listen="127.0.0.1:0",
    )
    thread = FacadeThread(settings)
    try:
        _wait_serving(f"127.0.0.1:{thread.running.health_port}", timeout_s=60)
        yield Facade(thread.port, f"127.0.0.1:{thread.port}", thread, settings)
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def stub(facade: Facade, pki: DevPki) -> Iterator[pb_grpc.TextGenerationStub]:
    with secure_channel(facade.endpoint, pki) as channel:
        yield pb_grpc.TextGenerationStub(channel)


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def request(model: str, content: str = QUESTION, **sampling: object) -> pb.GenerateRequest:
    params = pb.SamplingParams(
        max_tokens=AGENT_MAX_TOKENS, temperature=0.0, skip_special_tokens=False
    )
    params.MergeFrom(pb.SamplingParams(**sampling))  # type: ignore[arg-type]
    return pb.GenerateRequest(
        model=model, messages=[pb.ChatMessage(role="user", content=content)], sampling=params
    )


def generate(
    stub: pb_grpc.TextGenerationStub, token: str, req: pb.GenerateRequest, *, streamed: bool
) -> tuple[str, list[int], pb.GenerateResponse]:
    """(text, token ids, last message) of a Generate or a GenerateStream call."""
    md = [("authorization", f"Bearer {token}")]
    if not streamed:
        resp = stub.Generate(req, metadata=md, timeout=120)
        return resp.text, list(resp.token_ids), resp
    messages = list(stub.GenerateStream(req, metadata=md, timeout=120))
    ids = [t for m in messages for t in m.token_ids]
    return "".join(m.text for m in messages), ids, messages[-1]


@pytest.fixture(scope="module")
def reference(
    stub: pb_grpc.TextGenerationStub, token: str, triton: TritonProcess
) -> tuple[str, list[int]]:
    """The plain model's answer: end_id 2, which the engine leaves out of its output."""
    before = engine_metric(triton, GENERATED)
    text, ids, last = generate(stub, token, request(PLAIN), streamed=False)
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert 0 < len(ids) < 20 and TURN_END not in ids
    wait_until(lambda: engine_metric(triton, GENERATED) == before + len(ids))
    return text, ids


@pytest.mark.parametrize("streamed", [False, True], ids=["Generate", "GenerateStream"])
def test_a_non_first_end_id_ends_the_answer(
    stub: pb_grpc.TextGenerationStub,
    token: str,
    triton: TritonProcess,
    reference: tuple[str, list[int]],
    streamed: bool,
) -> None:
    generated = engine_metric(triton, GENERATED)
    completed = engine_metric(triton, OUTCOMES, outcome="completed")
    cancelled = engine_metric(triton, OUTCOMES, outcome="cancelled")
    text, ids, last = generate(stub, token, request(TWO_ENDS), streamed=streamed)
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert (text, ids) == reference  # the same answer as with end_id 2 itself
    assert TURN_END not in ids and FIRST not in ids
    assert "<|im_end|>" not in text and "<|endoftext|>" not in text  # special tokens kept
    assert last.usage.completion_tokens == len(ids) < AGENT_MAX_TOKENS
    # The engine generated the stop word (one token more than the answer) and ended the request
    # itself: completed, not cancelled by the façade.
    wait_until(lambda: engine_metric(triton, GENERATED) == generated + len(ids) + 1)
    wait_until(lambda: engine_metric(triton, OUTCOMES, outcome="completed") == completed + 1)
    assert engine_metric(triton, OUTCOMES, outcome="cancelled") == cancelled


def test_models_list_the_limits(stub: pb_grpc.TextGenerationStub, token: str) -> None:
    md = [("authorization", f"Bearer {token}")]
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), metadata=md).models}
    # SmolLM2's config.json states 8192; the output cap is the default 4096.
    limits = (8192, 4096, 256)
    for name in (TWO_ENDS, PLAIN, KNOWS_LIMIT):
        m = models[name]
        assert (m.max_context_tokens, m.max_output_tokens, m.default_max_tokens) == limits
    # The prompt limit: the engine's max_input_len when the façade knows it (its manifest).
    assert models[KNOWS_LIMIT].max_prompt_tokens == INPUT_LIMIT
    assert models[PLAIN].max_prompt_tokens == 8192


@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_front_door_alike(
    facade: Facade, pki: DevPki, token: str, reference: tuple[str, list[int]], stream: bool
) -> None:
    ref_text, ref_ids = reference
    with sdk(facade, pki, token) as client:
        answer = client.chat.completions.create(
            model=TWO_ENDS,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=AGENT_MAX_TOKENS,
            temperature=0.0,
            stream=stream,
            stream_options={"include_usage": True} if stream else None,
            extra_body={"skip_special_tokens": False},
        )
        if stream:
            chunks = list(answer)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            usage = chunks[-1].usage
        else:
            text, finish, usage = (
                answer.choices[0].message.content,
                answer.choices[0].finish_reason,
                answer.usage,
            )
    assert (text, finish) == (ref_text, "stop")
    assert usage is not None and usage.completion_tokens == len(ref_ids)


LONG = " ".join(["word"] * 60)  # well over INPUT_LIMIT tokens in the chat template


def test_the_engine_refuses_a_prompt_over_its_input_limit(
    stub: pb_grpc.TextGenerationStub, token: str, triton: TritonProcess
) -> None:
    # The façade does not know this engine's limit (no manifest): the CPU engine refuses, as a
    # TensorRT-LLM engine would, and the caller still gets INVALID_ARGUMENT naming the prompt.
    rejected = engine_metric(triton, OUTCOMES, outcome="rejected")
    with pytest.raises(grpc.RpcError) as err:
        generate(stub, token, request(PLAIN, LONG, max_tokens=4), streamed=False)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert details.startswith("prompt: ")
    assert "input_ids" in details and f"max_input_len of {INPUT_LIMIT}" in details
    wait_until(lambda: engine_metric(triton, OUTCOMES, outcome="rejected") == rejected + 1)


@pytest.mark.parametrize("streamed", [False, True], ids=["Generate", "GenerateStream"])
def test_a_facade_that_knows_the_limit_refuses_first(
    stub: pb_grpc.TextGenerationStub, token: str, triton: TritonProcess, streamed: bool
) -> None:
    rejected = engine_metric(triton, OUTCOMES, outcome="rejected")
    generated = engine_metric(triton, GENERATED)
    with pytest.raises(grpc.RpcError) as err:
        generate(stub, token, request(KNOWS_LIMIT, LONG, max_tokens=4), streamed=streamed)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert details.startswith("prompt: ")
    assert "prompt tokens exceed the 48-token prompt limit" in details
    # At the limit it is served.
    md = [("authorization", f"Bearer {token}")]
    counted = stub.CountTokens(
        pb.CountTokensRequest(
            model=KNOWS_LIMIT, messages=[pb.ChatMessage(role="user", content=LONG)]
        ),
        metadata=md,
        timeout=10,
    )
    assert f"{counted.prompt_tokens} prompt tokens" in details
    _, _, last = generate(stub, token, request(KNOWS_LIMIT, max_tokens=2), streamed=streamed)
    assert last.usage.prompt_tokens <= INPUT_LIMIT
    # The refused request never reached the engine.
    assert engine_metric(triton, OUTCOMES, outcome="rejected") == rejected
    wait_until(lambda: engine_metric(triton, GENERATED) == generated + 2)


def test_the_openai_front_door_names_the_numbers(facade: Facade, pki: DevPki, token: str) -> None:
    with sdk(facade, pki, token) as client, pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=KNOWS_LIMIT, messages=[{"role": "user", "content": LONG}], max_tokens=4
        )
    error = sdk_error(err.value)
    assert "48-token prompt limit" in error["message"]
