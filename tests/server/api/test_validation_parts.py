"""Messages given as parts (text and images): validation into the plan, and the OpenAI body's
`image_url` parts through protocol.chat_request → validate_generate, with every refusal named
as the caller sent it (protocol.param_name, errors.http_error_for)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from autoglm.server.api.openai import protocol as p
from autoglm.server.api.validation import (
    MAX_PROMPT_BYTES,
    validate_count_tokens,
    validate_generate,
)
from autoglm.server.errors import InvalidArgument, http_error_for
from autoglm.server.generation.images import ImageInput
from autoglm.server.generation.plan import GeneratePlan
from autoglm.server.tokenization import Message
from autoglm.v1 import text_generation_pb2 as pb

PNG = b"\x89PNG\r\n\x1a\n-not-checked-here"  # validation carries bytes; images.py reads them
JPEG = b"\xff\xd8\xff\xe0-not-checked-here"


def text(t: str) -> pb.ContentPart:
    return pb.ContentPart(text=t)


def image(data: bytes, mime: str = "image/png") -> pb.ContentPart:
    return pb.ContentPart(image=pb.Image(data=data, mime_type=mime))


def generate(*messages: pb.ChatMessage) -> GeneratePlan:
    return validate_generate(pb.GenerateRequest(model="vl", messages=messages))


def violations(*messages: pb.ChatMessage) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as info:
        generate(*messages)
    return info.value.violations


def test_parts_become_one_turn_with_its_texts_joined_and_its_image_count() -> None:
    plan = generate(
        pb.ChatMessage(role="system", content="You operate a phone."),
        pb.ChatMessage(role="user", parts=[image(PNG), text("Open"), text("the settings.")]),
    )
    assert plan.input.messages == (
        Message("system", "You operate a phone."),
        Message("user", "Open\nthe settings.", images=1),
    )
    assert plan.input.images == (ImageInput("messages[1].parts[0].image", PNG),)


def test_images_keep_their_order_across_turns_with_their_fields() -> None:
    plan = generate(
        pb.ChatMessage(role="user", parts=[image(PNG), image(JPEG, "image/jpeg"), text("a")]),
        pb.ChatMessage(role="assistant", content="ok"),
        pb.ChatMessage(role="user", parts=[text("b"), image(JPEG)]),
    )
    assert [i.field for i in plan.input.images] == [
        "messages[0].parts[0].image",
        "messages[0].parts[1].image",
        "messages[2].parts[1].image",
    ]
    assert [i.data for i in plan.input.images] == [PNG, JPEG, JPEG]
    assert [m.images for m in plan.input.messages] == [2, 0, 1]


def test_an_image_only_turn_has_empty_text() -> None:
    plan = generate(pb.ChatMessage(role="user", parts=[image(PNG)]))
    assert plan.input.messages == (Message("user", "", images=1),)


def test_text_parts_alone_are_a_plain_turn() -> None:
    plan = generate(pb.ChatMessage(role="user", parts=[text("a"), text("b")]))
    assert plan.input.messages == (Message("user", "a\nb"),)
    assert plan.input.images == ()


@pytest.mark.parametrize("role", ["system", "assistant"])
def test_images_only_in_user_turns(role: str) -> None:
    (violation,) = violations(
        pb.ChatMessage(role=role, parts=[text("x"), image(PNG)]),
        pb.ChatMessage(role="user", content="hi"),
    )
    assert violation[0] == "messages[0].parts[1].image"
    assert "user turns only" in violation[1] and repr(role) in violation[1]


def test_an_image_without_bytes_is_refused_naming_its_data() -> None:
    (violation,) = violations(pb.ChatMessage(role="user", parts=[image(b"")]))
    assert violation[0] == "messages[0].parts[0].image.data"


def test_content_and_parts_are_exclusive() -> None:
    (violation,) = violations(pb.ChatMessage(role="user", content="hi", parts=[text("x")]))
    assert violation[0] == "messages[0].content"
    assert "either content or parts" in violation[1]


def test_an_empty_part_is_refused() -> None:
    (violation,) = violations(pb.ChatMessage(role="user", parts=[text("x"), pb.ContentPart()]))
    assert violation == ("messages[0].parts[1]", "empty part: set text or image")


def test_every_bad_part_is_reported_at_once() -> None:
    found = violations(
        pb.ChatMessage(role="system", parts=[image(PNG)]),
        pb.ChatMessage(role="user", content="x", parts=[pb.ContentPart(), image(b"")]),
    )
    assert [f for f, _ in found] == [
        "messages[0].parts[0].image",
        "messages[1].content",
        "messages[1].parts[0]",
        "messages[1].parts[1].image.data",
    ]


def test_part_texts_count_towards_the_byte_limit() -> None:
    half = "x" * (MAX_PROMPT_BYTES // 2)
    found = violations(
        pb.ChatMessage(role="user", parts=[text(half), image(PNG)]),
        pb.ChatMessage(role="user", parts=[text(half), text("over")]),
    )
    assert [f for f, _ in found] == ["messages"]


def test_image_bytes_do_not_count_as_prompt_text() -> None:
    big = PNG + bytes(MAX_PROMPT_BYTES)
    plan = generate(pb.ChatMessage(role="user", parts=[image(big)]))
    assert plan.input.images[0].data == big


def test_count_tokens_takes_parts_too() -> None:
    prompt_input = validate_count_tokens(
        pb.CountTokensRequest(
            model="vl", messages=[pb.ChatMessage(role="user", parts=[image(PNG), text("hi")])]
        )
    )
    assert prompt_input.messages == (Message("user", "hi", images=1),)
    assert [i.field for i in prompt_input.images] == ["messages[0].parts[0].image"]


# ---- the OpenAI front door ---------------------------------------------------------------------


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes = PNG, **url: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data), **url}}


def openai_plan(messages: list[dict[str, Any]]) -> GeneratePlan:
    body = json.dumps({"model": "vl", "messages": messages}).encode()
    return validate_generate(p.chat_request(p.parse(p.ChatCompletionRequest, body)))


def openai_error(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The error body the caller gets (400), fields renamed as on the chat route."""
    with pytest.raises(InvalidArgument) as info:
        openai_plan(messages)
    status, body, _ = http_error_for(info.value, request_id="r", param_names=p.renamer("messages"))
    assert status == 400
    return body["error"]


def test_the_agents_call_shape_becomes_the_plan() -> None:
    # Open-AutoGLM's step: system prompt, then the screenshot and the instruction in one turn.
    plan = openai_plan(
        [
            {"role": "system", "content": "You are a phone agent."},
            {
                "role": "user",
                "content": [image_part(), {"type": "text", "text": "Open the settings."}],
            },
        ]
    )
    assert plan.input.messages == (
        Message("system", "You are a phone agent."),
        Message("user", "Open the settings.", images=1),
    )
    (img,) = plan.input.images
    assert img == ImageInput("messages[1].parts[0].image", PNG)
    # The caller's name of that field.
    assert p.param_name(img.field, prompt_field="messages") == "messages[1].content[0]"


def test_openai_parts_map_one_to_one_so_indexes_match() -> None:
    plan = openai_plan(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "before"},
                    image_part(),
                    {"type": "text", "text": "after"},
                    image_part(JPEG, detail="auto"),
                ],
            }
        ]
    )
    assert plan.input.messages == (Message("user", "before\nafter", images=2),)
    assert [p.param_name(i.field, prompt_field="messages") for i in plan.input.images] == [
        "messages[0].content[1]",
        "messages[0].content[3]",
    ]


def test_an_assistant_image_is_refused_naming_the_callers_part() -> None:
    error = openai_error(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "x"}, image_part()]},
        ]
    )
    assert error["param"] == "messages[1].content[1]"
    assert error["message"].startswith("messages[1].content[1]: images are accepted in user turns")


def test_an_empty_data_url_is_refused_naming_the_callers_part() -> None:
    error = openai_error([{"role": "user", "content": [image_part(b"")]}])
    assert error["param"] == "messages[0].content[0]"


def test_a_url_is_refused_before_anything_else_is_read() -> None:
    error = openai_error(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a"}}]}]
    )
    assert error["param"] == "messages[0].content[0].image_url.url"
    assert "never fetches" in error["message"]
