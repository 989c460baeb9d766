"""OpenAI response bodies and Server-Sent Events, written with orjson.

Pure (no I/O). A stream's constant part (`id`, `object`, `created`, `model`) is serialised
once per stream into a prefix; each delta then costs one `orjson.dumps` of its text. The
shapes are those the `openai` SDK parses (`ChatCompletionChunk`, `Completion`): the first chat
chunk's delta carries `role: "assistant"`, the last one `finish_reason`, and with
`stream_options.include_usage` a final chunk has `choices: []` and `usage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

DONE = b"data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_logprobs(tokens: Sequence[str], logprobs: Sequence[float]) -> list[dict[str, object]]:
    """The chat API's `logprobs.content` entries (no alternatives: `top_logprobs` is [])."""
    return [
        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
        for t, lp in zip(tokens, logprobs, strict=True)
    ]


def completion_logprobs(
    tokens: Sequence[str], logprobs: Sequence[float], offset: int
) -> dict[str, object]:
    """The legacy completions API's `logprobs` object (`top_logprobs` entries are null)."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": list(tokens),
        "token_logprobs": list(logprobs),
        "top_logprobs": [None] * len(tokens),
        "text_offset": offsets,
    }


@dataclass(frozen=True, slots=True)
class StreamHeader:
    id: str
    created: int
    model: str
    # Which model version answered ("autoglm-<model>-v<N>", as OpenAI's own field tells a
    # backend configuration); None for a model not served from a repository.
    system_fingerprint: str | None = None


class _Chunks:
    """What every event of one stream shares: the serialised prefix and the usage chunk."""

    __slots__ = ("_prefix",)
    object_name = ""

    def __init__(self, head: StreamHeader) -> None:
        self._prefix = b"".join(
            (
                b'data: {"id":',
                orjson.dumps(head.id),
                b',"object":',
                orjson.dumps(self.object_name),
                b',"created":',
                str(head.created).encode(),
                b',"model":',
                orjson.dumps(head.model),
                *(
                    (b',"system_fingerprint":', orjson.dumps(head.system_fingerprint))
                    if head.system_fingerprint is not None
                    else ()
                ),
            )
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return b"".join(
            (
                self._prefix,
                b',"choices":[],"usage":',
                orjson.dumps(usage(prompt_tokens, completion_tokens)),
                b"}\n\n",
            )
        )


class ChatChunks(_Chunks):
    """`chat.completion.chunk` events of one stream."""

    __slots__ = ("_first",)
    object_name = "chat.completion.chunk"

    def __init__(self, head: StreamHeader) -> None:
        super().__init__(head)
        self._first = True

    def delta(
        self, text: str, *, finish_reason: str | None = None, logprobs: object = None
    ) -> bytes:
        role = b'"role":"assistant",' if self._first else b""
        self._first = False
        lp = b"null" if logprobs is None else orjson.dumps({"content": logprobs})
        fr = b"null" if finish_reason is None else orjson.dumps(finish_reason)
        return b"".join(
            (
                self._prefix,
                b',"choices":[{"index":0,"delta":{',
                role,
                b'"content":',
                orjson.dumps(text),
                b'},"logprobs":',
                lp,
                b',"finish_reason":',
                fr,
                b"}]}\n\n",
            )
        )


class CompletionChunks(_Chunks):
    """`text_completion` events of one stream."""

    __slots__ = ()
    object_name = "text_completion"

    def delta(
        self, text: str, *, finish_reason: str | None = None, logprobs: object = None
    ) -> bytes:
        lp = b"null" if logprobs is None else orjson.dumps(logprobs)
        fr = b"null" if finish_reason is None else orjson.dumps(finish_reason)
        return b"".join(
            (
                self._prefix,
                b',"choices":[{"index":0,"text":',
                orjson.dumps(text),
                b',"logprobs":',
                lp,
                b',"finish_reason":',
                fr,
                b"}]}\n\n",
            )
        )


def error_event(body: dict[str, object]) -> bytes:
    """A failure after the stream began: one event with the `error` object (what the SDK's
    stream reader raises as an APIError), then the stream closes without `[DONE]`."""
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _whole(
    head: StreamHeader,
    kind: str,
    choice: dict[str, object],
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    """A non-streamed body: the stream header's fields, one choice, the usage."""
    return orjson.dumps(
        {
            "id": head.id,
            "object": kind,
            "created": head.created,
            "model": head.model,
            **(
                {"system_fingerprint": head.system_fingerprint}
                if head.system_fingerprint is not None
                else {}
            ),
            "choices": [{"index": 0, **choice}],
            "usage": usage(prompt_tokens, completion_tokens),
        }
    )


def chat_completion(
    head: StreamHeader,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: object = None,
) -> bytes:
    choice = {
        "message": {"role": "assistant", "content": text},
        "logprobs": None if logprobs is None else {"content": logprobs},
        "finish_reason": finish_reason,
    }
    return _whole(head, "chat.completion", choice, prompt_tokens, completion_tokens)


def text_completion(
    head: StreamHeader,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: object = None,
) -> bytes:
    choice = {"text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    return _whole(head, "text_completion", choice, prompt_tokens, completion_tokens)
