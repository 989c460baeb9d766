"""The OpenAI request bodies → autoglm.v1 requests, and every refusal naming the caller's field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoglm.server.api.openai import protocol as p
from autoglm.server.api.validation import validate_generate
from autoglm.server.errors import InvalidArgument

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> Any:
    body = {"model": "m", "messages": USER} | fields
    return p.chat_request(p.parse(p.ChatCompletionRequest, json.dumps(body).encode()))


def completion(**fields: Any) -> Any:
    body = {"model": "m", "prompt": "Once"} | fields
    return p.completion_request(p.parse(p.CompletionRequest, json.dumps(body).encode()))


def refused(make: Any, **fields: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as info:
        make(**fields)
    return info.value.violations


def test_the_agents_defaults_become_the_same_grpc_request() -> None:
    req = chat(
        max_tokens=3000, temperature=0.0, top_p=0.85, frequency_penalty=0.2, stream=True, seed=7
    )
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.seed) == (3000, 0.0, 7)
    assert s.top_p == pytest.approx(0.85)
    assert s.frequency_penalty == pytest.approx(0.2)
    assert not s.HasField("presence_penalty")
    plan = validate_generate(req)  # the gRPC API's own rules accept it
    assert plan.input.messages[0].content == "hi"


def test_text_parts_are_joined_with_newlines_and_developer_is_system() -> None:
    msgs = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    req = chat(messages=msgs)
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[0].content == "be brief"
    assert [part.text for part in req.messages[1].parts] == ["a", "b"]


def test_an_image_part_becomes_an_inline_image_in_order() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAEC"}}
    msgs = [{"role": "user", "content": [image, {"type": "text", "text": "what is this"}]}]
    (message,) = chat(messages=msgs).messages
    assert message.parts[0].image.data == bytes([0, 1, 2])
    assert message.parts[0].image.mime_type == "image/png"
    assert message.parts[1].text == "what is this"


@pytest.mark.parametrize(
    "url", ["https://example.com/a.png", "file:///etc/passwd", "/etc/passwd", "ftp://x/y"]
)
def test_only_data_urls_are_taken_naming_the_part(url: str) -> None:
    image = {"type": "image_url", "image_url": {"url": url}}
    (violation,) = refused(chat, messages=[{"role": "user", "content": [image]}])
    assert violation[0] == "messages[0].content[0].image_url.url"
    assert "never fetches" in violation[1]


def test_an_image_detail_other_than_auto_is_refused() -> None:
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAEC", "detail": "low"},
    }
    (violation,) = refused(chat, messages=[{"role": "user", "content": [image]}])
    assert violation[0] == "messages[0].content[0].image_url.detail"


@pytest.mark.parametrize(
    ("field", "caller"),
    [
        ("messages[2].parts[3].image", "messages[2].content[3]"),
        ("messages[0].parts[1].image.data", "messages[0].content[1]"),
        ("messages[1].content", "messages[1].content"),
        ("sampling.max_tokens", "max_tokens"),
    ],
)
def test_autoglm_fields_are_named_as_the_caller_sent_them(field: str, caller: str) -> None:
    assert p.param_name(field, prompt_field="messages") == caller


def test_stop_as_string_or_list() -> None:
    assert list(chat(stop="\n").sampling.stop) == ["\n"]
    assert list(chat(stop=["a", "b"]).sampling.stop) == ["a", "b"]


def test_max_completion_tokens_wins_and_a_conflict_is_refused() -> None:
    assert chat(max_completion_tokens=12).sampling.max_tokens == 12
    assert chat(max_tokens=12, max_completion_tokens=12).sampling.max_tokens == 12
    assert refused(chat, max_tokens=5, max_completion_tokens=6)[0][0] == "max_tokens"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"top_logprobs": 2, "logprobs": True}, "top_logprobs"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"guided_json": {}}, "guided_json"),  # an extra_body key this server cannot honour
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 10**30}, "max_tokens"),  # beyond autoglm.v1's int32: 400, not 500
        ({"max_completion_tokens": 2**70}, "max_completion_tokens"),
        ({"top_k": 2**40}, "top_k"),
        ({"top_k": -(2**40)}, "top_k"),
        ({"seed": 2**70}, "seed"),
        ({"stream": "yes"}, "stream"),
        (
            {"stream_options": {"continuous_usage_stats": True}},
            "stream_options.continuous_usage_stats",
        ),
    ],
)
def test_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    assert refused(chat, **fields)[0][0] == param


def test_skip_special_tokens_is_passed_on() -> None:
    assert chat().sampling.skip_special_tokens is True
    assert chat(skip_special_tokens=False).sampling.skip_special_tokens is False
    assert validate_generate(chat(skip_special_tokens=False)).sampling.skip_special_tokens is False
    assert validate_generate(chat()).sampling.skip_special_tokens is True


def test_inert_keys_are_accepted() -> None:
    chat(user="u-1", metadata={"k": "v"}, store=False, skip_special_tokens=True)


def test_every_bad_field_is_reported_at_once() -> None:
    fields = [f for f, _ in refused(chat, n=3, top_logprobs=1, foo=1)]
    assert sorted(fields) == ["foo", "n", "top_logprobs"]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
        ([{"role": "user", "content": [{"type": "input_audio"}]}], "messages[0].content[0].type"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[0].content[0].image_url.url",
        ),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": "x", "name": "bob"}], "messages[0].name"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
        ([{"role": "assistant", "content": None}], "messages[0].content"),
        ([{"content": "x"}], "messages[0].role"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a", "cache": 1}]}],
            "messages[0].content[0].cache",
        ),
    ],
)
def test_message_errors_name_the_path(messages: list[Any], field: str) -> None:
    assert refused(chat, messages=messages)[0][0] == field


def test_a_role_outside_the_template_is_refused_by_the_shared_rules() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_generate(chat(messages=[{"role": "tool", "content": "x"}]))
    assert info.value.violations[0][0] == "messages[0].role"


def test_bad_json_and_missing_fields() -> None:
    with pytest.raises(InvalidArgument) as info:
        p.parse(p.ChatCompletionRequest, b"{not json")
    assert info.value.violations == [("body", "is not valid JSON")]
    with pytest.raises(InvalidArgument) as info:
        p.parse(p.ChatCompletionRequest, b"{}")
    assert {f for f, _ in info.value.violations} == {"model", "messages"}


def test_completions() -> None:
    req = completion(max_tokens=4, logprobs=0)
    assert (req.prompt, req.sampling.max_tokens, req.sampling.logprobs) == ("Once", 4, True)
    assert completion(prompt=["Once"]).prompt == "Once"
    assert refused(completion, prompt=["a", "b"])[0][0] == "prompt"
    assert refused(completion, logprobs=2)[0][0] == "logprobs"
    assert refused(completion, echo=True)[0][0] == "echo"
    assert refused(completion, best_of=2)[0][0] == "best_of"
    assert refused(completion, prompt=[1, 2, 3])[0][0].startswith("prompt")


@pytest.mark.parametrize(
    ("field", "prompt_field", "name"),
    [
        ("sampling.max_tokens", "messages", "max_tokens"),
        ("sampling.stop", "messages", "stop"),
        ("prompt", "messages", "messages"),
        ("prompt", "prompt", "prompt"),
        ("messages[2].role", "messages", "messages[2].role"),
    ],
)
def test_param_names(field: str, prompt_field: str, name: str) -> None:
    assert p.param_name(field, prompt_field=prompt_field) == name
