"""SSE chunks and bodies parse back into what the `openai` SDK's own models expect."""

from __future__ import annotations

import json

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from autoglm.server.api.openai import chunks

HEAD = chunks.StreamHeader(id='chatcmpl-a"b', created=1_700_000_000, model="m\u00e9")


def event(raw: bytes) -> dict[str, object]:
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    return json.loads(raw[6:-2])  # type: ignore[no-any-return]


def test_chat_chunks_role_first_then_content_then_usage() -> None:
    enc = chunks.ChatChunks(HEAD)
    first = ChatCompletionChunk.model_validate(event(enc.delta("你好")))
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == "你好"
    assert first.id == HEAD.id and first.model == HEAD.model
    second = ChatCompletionChunk.model_validate(event(enc.delta("", finish_reason="stop")))
    assert second.choices[0].delta.role is None
    assert second.choices[0].finish_reason == "stop"
    last = ChatCompletionChunk.model_validate(event(enc.usage(5, 2)))
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        5,
        2,
        7,
    )


def test_chat_chunk_logprobs() -> None:
    lp = chunks.token_logprobs(["a", "é"], [-0.5, -1.25])
    chunk = ChatCompletionChunk.model_validate(
        event(chunks.ChatChunks(HEAD).delta("aé", logprobs=lp))
    )
    assert chunk.choices[0].logprobs is not None
    content = chunk.choices[0].logprobs.content or []
    assert [(c.token, c.logprob, c.bytes) for c in content] == [
        ("a", -0.5, [97]),
        ("é", -1.25, [0xC3, 0xA9]),
    ]


def test_completion_chunks_and_logprob_offsets() -> None:
    enc = chunks.CompletionChunks(HEAD)
    lp = chunks.completion_logprobs([" Par", "is"], [-0.1, -0.2], offset=3)
    # A streamed Completion has finish_reason null until its end, which the SDK's model (made
    # for whole bodies) does not allow: the SDK builds stream chunks without validation.
    chunk = event(enc.delta(" Paris", logprobs=lp))
    assert chunk["object"] == "text_completion"
    (choice,) = chunk["choices"]  # type: ignore[misc]
    assert (choice["text"], choice["finish_reason"]) == (" Paris", None)
    assert choice["logprobs"]["text_offset"] == [3, 7]
    end = Completion.model_validate(event(enc.delta("", finish_reason="length")))
    assert end.choices[0].finish_reason == "length"
    assert event(enc.usage(1, 1))["choices"] == []


def test_whole_bodies() -> None:
    body = json.loads(chunks.chat_completion(HEAD, "hi", "length", 3, 4))
    done = ChatCompletion.model_validate(body)
    assert done.choices[0].message.content == "hi"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.total_tokens == 7
    text = Completion.model_validate(json.loads(chunks.text_completion(HEAD, "x", "stop", 1, 1)))
    assert text.choices[0].text == "x"


def test_error_event_and_done() -> None:
    body = {"error": {"message": "m", "type": "server_error", "param": None, "code": None}}
    assert event(chunks.error_event(body)) == body
    assert chunks.DONE == b"data: [DONE]\n\n"
