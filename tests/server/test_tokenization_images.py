"""Turns with images: one placeholder per image before the text, joined by newlines (vLLM's
"string" content format), rendered by the model's own chat template (the tiny GLM-4.1V's is the
real GLM-4.1V-9B-Thinking template) exactly as transformers renders that string content; each
image's token expanded to the image's token count as the engine expands it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from autoglm.server.tokenization import (
    ChatTemplateError,
    Message,
    PromptEncoder,
    content_with_images,
    expand_image_tokens,
)

PH = "<|begin_of_image|><|image|><|end_of_image|>"


@pytest.fixture(scope="module")
def encoder(vlm_dir: Path) -> PromptEncoder:
    return PromptEncoder.from_model_dir(vlm_dir, image_placeholder=PH)


@pytest.fixture(scope="module")
def hf_tokenizer(vlm_dir: Path) -> Any:
    from transformers import AutoTokenizer  # slow to import: only for these tests

    return AutoTokenizer.from_pretrained(vlm_dir)


def as_vllm_renders(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The conversation as vLLM hands it to the template in the "string" content format."""
    return [
        {"role": m.role, "content": content_with_images(m.content, m.images, PH)} for m in messages
    ]


@pytest.mark.parametrize(
    ("text", "images", "expected"),
    [
        ("what is this", 1, f"{PH}\nwhat is this"),
        ("compare", 2, f"{PH}\n{PH}\ncompare"),
        ("", 1, PH),  # the placeholders alone when there is no text
        ("", 3, f"{PH}\n{PH}\n{PH}"),
        ("no image", 0, "no image"),
        ("line one\nline two", 1, f"{PH}\nline one\nline two"),
    ],
)
def test_content_with_images_is_vllms_string_format(text: str, images: int, expected: str) -> None:
    assert content_with_images(text, images, PH) == expected


def test_expand_image_tokens_repeats_each_image_token_by_its_count() -> None:
    # ids: 7 = the image token; two images of 3 and 1 tokens.
    assert expand_image_tokens([1, 7, 2, 7, 3], 7, [3, 1]) == [1, 7, 7, 7, 2, 7, 3]
    assert expand_image_tokens([1, 2], 7, []) == [1, 2]


@pytest.mark.parametrize(("ids", "counts"), [([1, 7, 2], []), ([1, 2], [4]), ([7, 7], [1])])
def test_expand_image_tokens_refuses_a_count_mismatch(ids: list[int], counts: list[int]) -> None:
    with pytest.raises(ValueError, match="image tokens in the prompt for"):
        expand_image_tokens(ids, 7, counts)


CONVERSATIONS = {
    "agent_step": [
        Message("system", "You operate a phone."),
        Message("user", "Open the settings.", images=1),
    ],
    "two_steps": [
        Message("system", "You operate a phone."),
        Message("user", "Open the settings.", images=1),
        Message("assistant", "<answer>do(action=Tap)</answer>"),
        Message("user", "Now the wifi.", images=1),
    ],
    "two_images_one_turn": [Message("user", "Which differs?", images=2)],
    "image_only": [Message("user", "", images=1)],
    "no_images": [Message("user", "hello")],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_turns_with_images_render_as_transformers_renders_the_string_content(
    encoder: PromptEncoder, hf_tokenizer: Any, name: str
) -> None:
    messages = CONVERSATIONS[name]
    expected = hf_tokenizer.apply_chat_template(
        as_vllm_renders(messages), tokenize=False, add_generation_prompt=True
    )
    assert encoder.render_chat(messages) == expected


def test_the_agent_step_renders_its_placeholder_before_the_text(encoder: PromptEncoder) -> None:
    assert encoder.render_chat(CONVERSATIONS["agent_step"]) == (
        "[gMASK]<sop><|system|>\nYou operate a phone."
        f"<|user|>\n{PH}\nOpen the settings.<|assistant|>\n"
    )


def test_images_stay_in_message_order(encoder: PromptEncoder) -> None:
    rendered = encoder.render_chat(CONVERSATIONS["two_steps"])
    assert rendered.count(PH) == 2
    first, second = (i for i in range(len(rendered)) if rendered.startswith(PH, i))
    assert first < rendered.index("Open the settings.") < second < rendered.index("Now the wifi.")


def test_each_placeholder_is_one_image_token(encoder: PromptEncoder, vlm_dir: Path) -> None:
    text = encoder.render_chat(CONVERSATIONS["two_images_one_turn"])
    ids = encoder.tokenizer.encode(text, add_special_tokens=False).ids
    token = json.loads((vlm_dir / "config.json").read_text())["image_token_id"]
    assert encoder.tokenizer.token_to_id("<|image|>") == token
    assert ids.count(token) == 2
    expanded = expand_image_tokens(ids, token, [5, 9])
    assert expanded.count(token) == 14
    assert len(expanded) == len(ids) + 4 + 8


def test_a_text_only_encoder_refuses_images(model_dir: Path) -> None:
    plain = PromptEncoder.from_model_dir(model_dir)
    with pytest.raises(ChatTemplateError, match="does not accept images"):
        plain.render_chat([Message("user", "look", images=1)])
