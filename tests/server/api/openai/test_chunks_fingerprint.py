"""The model version that answered, as OpenAI's `system_fingerprint` (chunks.py, canary.py)."""

from __future__ import annotations

import json

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from autoglm.server.api.openai import chunks

HEAD = chunks.StreamHeader("chatcmpl-1", 1_700_000_000, "m", "autoglm-m-v2")


def event(raw: bytes) -> dict[str, object]:
    return json.loads(raw[6:-2])  # type: ignore[no-any-return]


def test_every_chunk_and_body_carries_the_fingerprint() -> None:
    chat = chunks.ChatChunks(HEAD)
    for raw in (chat.delta("a"), chat.delta("b", finish_reason="stop"), chat.usage(1, 2)):
        assert ChatCompletionChunk.model_validate(event(raw)).system_fingerprint == "autoglm-m-v2"
    text = chunks.CompletionChunks(HEAD)
    assert event(text.delta("x"))["system_fingerprint"] == "autoglm-m-v2"
    body = json.loads(chunks.chat_completion(HEAD, "hi", "stop", 1, 1))
    assert ChatCompletion.model_validate(body).system_fingerprint == "autoglm-m-v2"
    whole = json.loads(chunks.text_completion(HEAD, "x", "stop", 1, 1))
    assert Completion.model_validate(whole).system_fingerprint == "autoglm-m-v2"


def test_no_fingerprint_without_a_version() -> None:
    head = chunks.StreamHeader("chatcmpl-1", 1, "m")
    assert "system_fingerprint" not in event(chunks.ChatChunks(head).delta("a"))
    assert "system_fingerprint" not in json.loads(chunks.chat_completion(head, "", "stop", 1, 1))
