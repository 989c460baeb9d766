"""The OpenAI path's pure parts: SSE framing (split anywhere), the chunk fields, the token split."""

from __future__ import annotations

import pytest

from autoglm.bench.sse import Chunk, SseParser, StreamError, read_chunk, token_split

STREAM = (
    b": a comment\n"
    b'data: {"a": 1}\n\n'
    b"event: ignored\nid: 7\ndata:first\ndata: second\n\n"
    b"data: [DONE]\n\n"
)
EVENTS = [b'{"a": 1}', b"first\nsecond", b"[DONE]"]


def _feed_all(parser: SseParser, pieces: list[bytes]) -> list[bytes]:
    return [event for piece in pieces for event in parser.feed(piece)]


def test_events_whole() -> None:
    parser = SseParser()
    assert parser.feed(STREAM) == EVENTS
    assert not parser.pending


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_events_split_at_every_byte_whatever_the_line_ends(eol: bytes) -> None:
    stream = STREAM.replace(b"\n", eol)
    for cut in range(1, len(stream)):
        for second in (cut + 1, cut + 5, len(stream)):
            pieces = [stream[:cut], stream[cut:second], stream[second:]]
            assert _feed_all(SseParser(), pieces) == EVENTS, (eol, cut, second)


def test_byte_by_byte_crlf() -> None:
    stream = STREAM.replace(b"\n", b"\r\n")
    parser = SseParser()
    assert _feed_all(parser, [stream[i : i + 1] for i in range(len(stream))]) == EVENTS


def test_an_unfinished_event_is_pending_not_dispatched() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"x": 1}\n') == []
    assert parser.pending
    assert parser.feed(b"\n") == [b'{"x": 1}']
    assert parser.feed(b"") == []
    # a blank line with no data dispatches nothing; `data` with no colon is an empty line
    assert parser.feed(b"\n\ndata\n\n") == [b""]


def test_completion_chat_and_usage_chunks() -> None:
    text = {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": " a"}]}
    assert read_chunk(text) == Chunk(" a")
    chat = {"choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": None}]}
    assert read_chunk(chat) == Chunk("b")
    role = {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    assert read_chunk(role) == Chunk("")
    last = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    assert read_chunk(last) == Chunk("", None, "length")
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
    assert read_chunk(usage) == Chunk("", 5)


def test_error_event_and_bad_chunks() -> None:
    with pytest.raises(StreamError, match="SSE_ERROR: engine gone") as exc:
        read_chunk({"error": {"message": "engine gone", "type": "server_error"}})
    assert exc.value.status_name == "SSE_ERROR"
    with pytest.raises(StreamError, match="SSE_BAD_CHUNK"):
        read_chunk([1, 2])


def test_token_split() -> None:
    assert token_split(3, [4, 1, 9]) == [1, 1, 1]  # one token a chunk, whatever the text
    assert token_split(0, []) == []
    # coalesced: the surplus goes by text length, the counts add up
    assert token_split(6, [2, 2, 4]) == [2, 2, 2]  # shares 0.75, 0.75, 1.5 of the 3 extra
    assert token_split(7, [2, 2, 4]) == [2, 2, 3]
    split = token_split(10, [1, 1, 8])
    assert sum(split) == 10 and split[2] == max(split) and min(split) >= 1
    assert token_split(2, [5, 5, 5]) == [1, 1, 0]  # fewer tokens than chunks: a server bug
    assert token_split(5, [0, 0]) in ([3, 2], [2, 3])


@pytest.mark.parametrize("total", range(4, 40))
def test_token_split_adds_up(total: int) -> None:
    weights = [3, 1, 7, 2]
    split = token_split(total, weights)
    assert sum(split) == total and min(split) >= 1
