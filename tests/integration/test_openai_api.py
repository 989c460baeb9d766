"""The OpenAI-compatible front door (issue #21) through the official `openai` SDK, sync and
async, against the real façade, the real Triton and the real model: the agent's call shape,
models, streaming, usage, every request field, CJK text and cancellation.

Errors are in test_openai_errors.py, TLS and certificates in test_openai_security.py, traces,
metrics and audit records in test_openai_observability.py.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from PIL import Image as PILImage

from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess

from .conftest import LONG_PROMPT, MODEL, VLM, Facade, engine_metric, scrape
from .openai_sdk import async_sdk, base_url, sdk, sdk_error

pytestmark = pytest.mark.integration

# Greedy (temperature 0) answers of SmolLM2-135M-Instruct to these, seen on this model:
FRANCE = "What is the capital of France?"  # "The capital of France is Paris." then stop
COUNT = "Count from 1 to 20, separated by commas."  # "1. 1\n2. 2\n3. 3\n…", no early stop
CHINESE = "用中文回答：你叫什么名字？"  # "你叫什么名字？" then stop, every character multi-token
JAPANESE = "日本語で答えてください：あなたの名前は何ですか？"  # Japanese, then stop
REPETITIVE = "apple apple apple apple apple apple apple"  # greedy continues one fixed way


@pytest.fixture(scope="module")
def oai(facade: Facade, pki: DevPki, token: str) -> Iterator[openai.OpenAI]:
    with sdk(facade, pki, token) as client:
        yield client


def _chat(oai: openai.OpenAI, content: str, **kwargs: Any) -> Any:
    return oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )


def _chat_text(oai: openai.OpenAI, content: str, **kwargs: Any) -> str:
    return _chat(oai, content, **kwargs).choices[0].message.content


def _complete_text(oai: openai.OpenAI, prompt: str, **kwargs: Any) -> str:
    return oai.completions.create(model=MODEL, prompt=prompt, **kwargs).choices[0].text


def _bad_request(call: Callable[[], object]) -> dict[str, Any]:
    """The error object of a call that must be a 400."""
    with pytest.raises(openai.BadRequestError) as err:
        call()
    assert err.value.status_code == 400
    error = sdk_error(err.value)
    assert error["type"] == "invalid_request_error"
    return error


# --- the agent's call, with the SDK unchanged -----------------------------------------------------

_AGENT = """
import json, openai
client = openai.OpenAI()  # OPENAI_BASE_URL, OPENAI_API_KEY; trust from SSL_CERT_FILE
models = [m.id for m in client.models.list()]
messages = [
    {"role": "system", "content": "You are a phone agent. Answer with do(action=...)."},
    {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%s"}},
        {"type": "text", "text": "Open the settings app."},
    ]},
]
agent = dict(max_tokens=3000, temperature=0.0, top_p=0.85, frequency_penalty=0.2, stream=True)
seen = list(client.chat.completions.create(model=%r, messages=messages, **agent))
try:
    client.chat.completions.create(model=%r, messages=messages, **agent)
    refusal = None
except openai.BadRequestError as exc:
    refusal = {"status": exc.status_code, "error": exc.response.json()["error"]}
messages[1]["content"] = messages[1]["content"][1:]  # the same turn without its screenshot
agent["max_tokens"] = 8
chunks = list(client.chat.completions.create(model=%r, messages=messages, **agent))
print(json.dumps({
    "models": models,
    "vision_text": "".join(c.choices[0].delta.content or "" for c in seen if c.choices),
    "vision_finish": [c.choices[0].finish_reason for c in seen if c.choices][-1],
    "refusal": refusal,
    "roles": [c.choices[0].delta.role for c in chunks if c.choices],
    "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    "finish": [c.choices[0].finish_reason for c in chunks if c.choices][-1],
}))
"""


def _screenshot_b64() -> str:
    """A phone-screenshot-sized PNG (1080×2400), base64."""
    out = io.BytesIO()
    PILImage.new("RGB", (1080, 2400), (20, 120, 140)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_agent_call_shape_with_the_unchanged_sdk(facade: Facade, pki: DevPki, token: str) -> None:
    """Open-AutoGLM's phone agent as it runs: the SDK configured by its environment only
    (base URL, key, and the private CA through SSL_CERT_FILE), its models check, then its
    streamed call with a screenshot: answered by the vision model (the tiny random GLM-4.1V),
    refused by the text-only model with a 400 naming the image part."""
    env = {
        "OPENAI_BASE_URL": base_url(facade),
        "OPENAI_API_KEY": token,
        "SSL_CERT_FILE": str(pki.ca_cert),
    }
    script = _AGENT % (_screenshot_b64(), VLM, MODEL, MODEL)
    # sys.executable: the project's .venv/bin/python, where the SDK is installed.
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert MODEL in out["models"] and VLM in out["models"]
    assert out["vision_text"] and out["vision_finish"] in ("stop", "length")
    refusal = out["refusal"]
    assert refusal is not None, "the screenshot was accepted by a text-only model"
    assert refusal["status"] == 400
    assert refusal["error"]["param"] == "messages[1].content[0]"
    assert "does not accept images" in refusal["error"]["message"]
    assert refusal["error"]["type"] == "invalid_request_error"
    # Without the screenshot, the same call streams: role first, text, then the finish.
    assert out["roles"][0] == "assistant" and out["text"] and out["finish"] == "length"


# --- models ---------------------------------------------------------------------------------------


def test_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    listed = oai.models.list()
    assert sorted(m.id for m in listed.data) == sorted([MODEL, VLM])
    model = listed.data[0]
    assert model.object == "model" and model.owned_by and model.created > 0
    assert oai.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        oai.models.retrieve("no-such-model")
    error = sdk_error(err.value)
    assert (error["param"], error["code"]) == ("model", "model_not_found")


# --- streaming, usage and finish reasons ----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "max_tokens", "finish"), [(FRANCE, 30, "stop"), (COUNT, 12, "length")]
)
def test_chat_stream_equals_unary_with_usage(
    oai: openai.OpenAI, content: str, max_tokens: int, finish: str
) -> None:
    kwargs: dict[str, Any] = dict(max_tokens=max_tokens, temperature=0.0, seed=11)
    unary = _chat(oai, content, **kwargs)
    chunks = list(
        _chat(oai, content, stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    *deltas, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in deltas)
    assert deltas[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in deltas[1:])
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {(c.object, c.model) for c in chunks} == {("chat.completion.chunk", MODEL)}
    assert [c.choices[0].finish_reason for c in deltas] == [None] * (len(deltas) - 1) + [finish]
    text = "".join(c.choices[0].delta.content or "" for c in deltas)
    assert text == unary.choices[0].message.content and text
    assert unary.choices[0].finish_reason == finish
    assert unary.object == "chat.completion" and unary.choices[0].message.role == "assistant"
    assert last.usage.model_dump() == unary.usage.model_dump()
    usage = unary.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish == "length":
        assert usage.completion_tokens == max_tokens
    else:
        assert 0 < usage.completion_tokens < max_tokens


async def test_completions_stream_equals_unary_async(
    facade: Facade, pki: DevPki, token: str
) -> None:
    async with async_sdk(facade, pki, token) as client:
        for kwargs in (dict(temperature=0.0, seed=3), dict(temperature=0.9, seed=3)):
            unary = await client.completions.create(
                model=MODEL, prompt=LONG_PROMPT, max_tokens=10, **kwargs
            )
            stream = await client.completions.create(
                model=MODEL, prompt=LONG_PROMPT, max_tokens=10, stream=True,
                stream_options={"include_usage": True}, **kwargs,
            )  # fmt: skip
            chunks = [c async for c in stream]
            *deltas, last = chunks
            assert last.choices == [] and last.usage == unary.usage
            assert unary.usage is not None and unary.usage.completion_tokens == 10
            assert {c.object for c in chunks} == {"text_completion"}
            assert "".join(c.choices[0].text for c in deltas) == unary.choices[0].text
            assert deltas[-1].choices[0].finish_reason == unary.choices[0].finish_reason
            assert unary.choices[0].finish_reason == "length"


def test_stream_without_include_usage_has_no_usage_chunk(oai: openai.OpenAI) -> None:
    chunks = list(_chat(oai, FRANCE, max_tokens=3, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


# --- request fields -------------------------------------------------------------------------------


def test_max_tokens_and_max_completion_tokens(oai: openai.OpenAI) -> None:
    # Greedy: the count runs on past these few tokens, so finish_reason is "length".
    greedy = {"temperature": 0.0}
    assert _chat(oai, COUNT, max_completion_tokens=3, **greedy).usage.completion_tokens == 3
    both = _chat(oai, COUNT, max_tokens=4, max_completion_tokens=4, **greedy)
    assert both.usage.completion_tokens == 4
    error = _bad_request(lambda: _chat(oai, COUNT, max_tokens=4, max_completion_tokens=5))
    assert error["param"] == "max_tokens" and "max_completion_tokens" in error["message"]
    assert _bad_request(lambda: _chat(oai, COUNT, max_tokens=0))["param"] == "max_tokens"


def test_temperature_top_p_seed(oai: openai.OpenAI) -> None:
    def text(**kwargs: Any) -> str:
        return _complete_text(oai, LONG_PROMPT, max_tokens=8, **kwargs)

    greedy = text(temperature=0.0)
    assert text(temperature=0.0) == greedy
    # A seed makes sampling repeatable; another seed samples another text.
    sampled = text(temperature=1.0, seed=5)
    assert text(temperature=1.0, seed=5) == sampled
    assert text(temperature=1.0, seed=6) != sampled
    # top_p so small that only the most likely token is left: sampling becomes greedy.
    assert text(temperature=1.0, seed=5, top_p=1e-6) == greedy
    # temperature out of range names the field.
    assert _bad_request(lambda: text(temperature=2.5))["param"] == "temperature"
    assert _bad_request(lambda: text(top_p=0.0))["param"] == "top_p"


def test_extras_top_k_and_repetition_penalty(oai: openai.OpenAI) -> None:
    greedy = _complete_text(oai, LONG_PROMPT, max_tokens=8, temperature=0.0)
    # top_k 1 leaves only the most likely token: sampling at temperature 1 becomes greedy.
    top1 = _complete_text(
        oai, LONG_PROMPT, max_tokens=8, temperature=1.0, seed=5, extra_body={"top_k": 1}
    )
    assert top1 == greedy
    plain = _complete_text(oai, REPETITIVE, max_tokens=12, temperature=0.0)
    penalised = _complete_text(
        oai, REPETITIVE, max_tokens=12, temperature=0.0, extra_body={"repetition_penalty": 1.8}
    )
    assert penalised != plain
    error = _bad_request(lambda: _chat(oai, FRANCE, max_tokens=2, extra_body={"top_k": -5}))
    assert error["param"] == "top_k"


@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_penalty_changes_greedy_output_on_a_repetitive_prompt(
    oai: openai.OpenAI, penalty: str
) -> None:
    plain = _complete_text(oai, REPETITIVE, max_tokens=12, temperature=0.0)
    assert _complete_text(oai, REPETITIVE, max_tokens=12, temperature=0.0, **{penalty: 0.0}) == (
        plain
    )
    penalised = _complete_text(oai, REPETITIVE, max_tokens=12, temperature=0.0, **{penalty: 1.5})
    assert penalised != plain
    error = _bad_request(lambda: _chat(oai, FRANCE, max_tokens=2, **{penalty: 2.5}))
    assert error["param"] == penalty


def test_stop_strings_are_excluded_from_the_text(oai: openai.OpenAI) -> None:
    full = _chat_text(oai, COUNT, max_tokens=16, temperature=0.0)
    assert "2." in full and "\n3" in full, full  # the greedy answer counts "1. 1\n2. 2\n…"
    for stop, cut, stream in (("2.", "2.", False), (["never-said", "\n3"], "\n3", True)):
        unary = _chat(oai, COUNT, max_tokens=16, temperature=0.0, stop=stop)
        assert unary.choices[0].message.content == full[: full.index(cut)]
        assert unary.choices[0].finish_reason == "stop"
        if stream:
            chunks = list(_chat(oai, COUNT, max_tokens=16, temperature=0.0, stop=stop, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            assert text == full[: full.index(cut)]
            assert chunks[-1].choices[0].finish_reason == "stop"
    # Completions too.
    prompt_full = _complete_text(oai, LONG_PROMPT, max_tokens=8, temperature=0.0)
    words = prompt_full.split()
    assert len(words) >= 3, prompt_full
    cut_text = _complete_text(oai, LONG_PROMPT, max_tokens=8, temperature=0.0, stop=words[2])
    assert cut_text == prompt_full[: prompt_full.index(words[2])]
    assert _bad_request(lambda: _chat(oai, FRANCE, max_tokens=2, stop=[""]))["param"] == "stop[0]"


def test_n_and_user(oai: openai.OpenAI) -> None:
    error = _bad_request(lambda: _chat(oai, FRANCE, n=2, max_tokens=2))
    assert error["param"] == "n"
    assert _chat(oai, FRANCE, n=1, max_tokens=2, temperature=0.0).usage.completion_tokens == 2
    with_user = _chat(oai, FRANCE, user="agent-42", max_tokens=2, temperature=0.0)
    assert with_user.usage.completion_tokens == 2


def test_skip_special_tokens(oai: openai.OpenAI) -> None:
    """A raw prompt that ends after the user's turn: the model opens its own turn with the
    special token <|im_start|>, left out of the text by default, kept when asked."""
    prompt = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"

    def text(**kwargs: Any) -> str:
        return _complete_text(oai, prompt, max_tokens=4, temperature=0.0, **kwargs)

    default = text()
    assert default == text(extra_body={"skip_special_tokens": True})
    assert "<|im_start|>" not in default
    kept = text(extra_body={"skip_special_tokens": False})
    assert kept.startswith("<|im_start|>")
    assert kept.replace("<|im_start|>", "") == default
    error = _bad_request(lambda: text(extra_body={"skip_special_tokens": "no"}))
    assert error["param"] == "skip_special_tokens"


def test_unknown_extra_body_key_is_refused_by_name(oai: openai.OpenAI) -> None:
    # A key this server cannot honour is refused by name, never silently dropped.
    error = _bad_request(
        lambda: _chat(oai, FRANCE, max_tokens=2, extra_body={"guided_regex": "[0-9]+"})
    )
    assert error["param"] == "guided_regex" and "guided_regex" in error["message"]
    error = _bad_request(lambda: _complete_text(oai, "hi", max_tokens=2, extra_body={"min_p": 0.1}))
    assert error["param"] == "min_p"


def test_logprobs_one_per_token(oai: openai.OpenAI) -> None:
    unary = _chat(oai, FRANCE, max_tokens=6, temperature=0.0, logprobs=True)
    entries = unary.choices[0].logprobs.content
    assert len(entries) == unary.usage.completion_tokens == 6
    assert all(e.logprob <= 0 and e.top_logprobs == [] for e in entries)
    assert "".join(e.token for e in entries) == unary.choices[0].message.content
    chunks = list(_chat(oai, FRANCE, max_tokens=6, temperature=0.0, logprobs=True, stream=True))
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    # The legacy completions API: logprobs 0 = the chosen tokens only.
    done = oai.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=5, logprobs=0)
    lp = done.choices[0].logprobs
    assert lp is not None and len(lp.token_logprobs) == 5 and max(lp.token_logprobs) <= 0
    # Alternatives are more than the engine gives: refused by name.
    error = _bad_request(lambda: _chat(oai, FRANCE, logprobs=True, top_logprobs=2, max_tokens=2))
    assert error["param"] == "top_logprobs"
    error = _bad_request(lambda: _complete_text(oai, "hi", logprobs=2, max_tokens=2))
    assert error["param"] == "logprobs"


# --- CJK ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [CHINESE, JAPANESE], ids=["chinese", "japanese"])
async def test_cjk_streaming_has_no_replacement_characters(
    facade: Facade, pki: DevPki, token: str, content: str
) -> None:
    """Each of these characters is several byte-level tokens; a delta must never carry half
    of one (which would decode as U+FFFD). The answer ends at its first line (a stop string):
    a length cut in the middle of a character leaves that character's bytes incomplete, which
    the full decode also shows as U+FFFD (detokenizer.py)."""
    kwargs: Any = dict(max_tokens=40, temperature=0.0, stop="\n")
    async with async_sdk(facade, pki, token) as client:
        messages: Any = [{"role": "user", "content": content}]
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, **kwargs
        )
        chunks = [c async for c in stream]
        unary = await client.chat.completions.create(model=MODEL, messages=messages, **kwargs)
    deltas = [c.choices[0].delta.content or "" for c in chunks]
    assert chunks[-1].choices[0].finish_reason == unary.choices[0].finish_reason == "stop"
    text = "".join(deltas)
    assert "\ufffd" not in text and not any("\ufffd" in d for d in deltas)
    assert any("\u3040" <= ch <= "\u9fff" for ch in text), text  # kana or CJK ideographs
    assert text == unary.choices[0].message.content


# --- cancellation ---------------------------------------------------------------------------------


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_closing_a_stream_cancels_the_engine_request(
    oai: openai.OpenAI, facade: Facade, triton: TritonProcess
) -> None:
    metric = "autoglm_engine_requests_total"
    before = engine_metric(triton, metric, outcome="cancelled")
    tokens_before = engine_metric(triton, "autoglm_engine_generated_tokens_total")
    cancelled = dict(model=MODEL, api="openai", rpc="completions", code="CANCELLED")
    facade_before = scrape(facade.metrics_url, "autoglm_requests_total", **cancelled)
    stream = oai.completions.create(
        model=MODEL, prompt=LONG_PROMPT, max_tokens=500, seed=1, stream=True
    )
    received = 0
    for chunk in stream:
        received += bool(chunk.choices[0].text)
        if received >= 3:
            break
    stream.close()  # the caller goes away mid-stream
    _wait_for(lambda: engine_metric(triton, metric, outcome="cancelled") >= before + 1)
    generated = engine_metric(triton, "autoglm_engine_generated_tokens_total") - tokens_before
    assert generated < 500  # generation really stopped early
    _wait_for(
        lambda: (
            scrape(facade.metrics_url, "autoglm_requests_total", **cancelled) >= facade_before + 1
        )
    )
