"""IncrementalDetokenizer against the real SmolLM2 byte-level BPE tokenizer.

The reference is always `tokenizer.decode(all_ids)`: streaming must reproduce it exactly, whatever
the chunking and wherever generation stops, and must never show a U+FFFD that the full decode
does not have at that position.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from autoglm.server.generation.detokenizer import IncrementalDetokenizer

FFFD = "\ufffd"
VOCAB = 49152
EOS = 2  # "<|im_end|>", special

SAMPLES = [
    "Hello, world! This is plain ASCII text.",
    "中文测试：今天天气很好，我们去公园散步吧。",
    "日本語のテキストと한국어 텍스트",
    "👩🏽‍💻 writes code; 👨‍👩‍👧‍👦 is a family; 🏳️‍🌈 is a flag; 👍🏿👋🏻",
    "Mixed: café, naïve, Ωμέγα, Привет, مرحبا, שלום, हिन्दी, ไทย, 1+1=2 ∑∫√",
    "  leading spaces,\ttabs\nand\r\nnewlines  ",
    "emoji at the end 🤖",
    "🎉",
]

HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # reproducible CI; the seeded loops below add breadth
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def partial_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids of tokens holding part of a UTF-8 sequence (their own decode shows U+FFFD).

    Only ~0.6% of the vocabulary, so uniform random ids would rarely exercise the hard cases.
    """
    return [token_id for token_id in range(VOCAB) if FFFD in tokenizer.decode([token_id])]


def mixed_id(rng: random.Random, partial_ids: Sequence[int]) -> int:
    """Any id, a partial-UTF-8 id or a special id, in equal measure."""
    pool = rng.randrange(3)
    if pool == 0:
        return rng.randrange(VOCAB)
    return rng.choice(partial_ids) if pool == 1 else rng.randrange(17)


def stream(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    chunk_sizes: Iterable[int] = (),
    *,
    skip_special_tokens: bool = True,
) -> list[str]:
    """Feeds ``ids`` in chunks (one token at a time once sizes run out); returns every output,
    the flush() result last, checking after each step that the emitted text is stable."""
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    final = tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
    sizes = iter(chunk_sizes)
    pieces: list[str] = []
    pos = 0
    while pos < len(ids):
        size = next(sizes, 1)
        pieces.append(detok.add(ids[pos : pos + size]))
        pos += size
        emitted = "".join(pieces)
        # Text once emitted can no longer change: it is a prefix of the decode of what has been
        # added so far *and* of the final decode, so any FFFD in it is a genuine one.
        assert tokenizer.decode(
            list(ids[:pos]), skip_special_tokens=skip_special_tokens
        ).startswith(emitted)
        assert final.startswith(emitted)
        assert detok.text == emitted
    pieces.append(detok.flush())
    assert detok.token_ids == tuple(ids)
    return pieces


def assert_matches_decode(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    chunk_sizes: Iterable[int] = (),
    *,
    skip_special_tokens: bool = True,
) -> None:
    pieces = stream(tokenizer, ids, chunk_sizes, skip_special_tokens=skip_special_tokens)
    expected = tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
    assert "".join(pieces) == expected
    if FFFD not in expected:
        assert all(FFFD not in piece for piece in pieces)


def test_ascii_is_emitted_token_by_token(tokenizer: Tokenizer) -> None:
    """No needless holding back: complete text comes out on the step that completes it."""
    ids = tokenizer.encode(SAMPLES[0]).ids
    detok = IncrementalDetokenizer(tokenizer)
    for i, token in enumerate(ids):
        before = tokenizer.decode(ids[:i])
        assert detok.add([token]) == tokenizer.decode(ids[: i + 1])[len(before) :]
    assert detok.flush() == ""
    assert detok.text == SAMPLES[0]


def test_split_character_is_held_until_complete(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🤖").ids
    assert len(ids) > 1, "expected the emoji to span several byte-level tokens"
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add([token]) for token in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add(ids[-1:]) == "🤖"
    assert detok.flush() == ""


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_cut_position_one_token_at_a_time(tokenizer: Tokenizer, sample: str) -> None:
    """Generation may stop after any token, even in the middle of a character."""
    ids = tokenizer.encode(sample).ids
    for cut in range(len(ids) + 1):
        assert_matches_decode(tokenizer, ids[:cut])
        assert_matches_decode(tokenizer, ids[:cut], skip_special_tokens=False)


@pytest.mark.parametrize("sample", SAMPLES)
def test_random_chunk_sizes(tokenizer: Tokenizer, sample: str) -> None:
    ids = tokenizer.encode(sample).ids
    rng = random.Random(sample)
    for _ in range(30):
        sizes = [rng.randint(1, 5) for _ in ids]
        cut = rng.randint(0, len(ids))
        assert_matches_decode(tokenizer, ids[:cut], sizes)


def test_whole_sequence_in_one_add(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(SAMPLES[3]).ids
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add(ids) + detok.flush() == SAMPLES[3]


@given(data=st.data())
@HYPOTHESIS
def test_random_vocabulary_ids(
    tokenizer: Tokenizer, partial_ids: list[int], data: st.DataObject
) -> None:
    """Arbitrary id sequences, rich in partial/invalid UTF-8 and special tokens."""
    token = st.one_of(st.integers(0, VOCAB - 1), st.sampled_from(partial_ids), st.integers(0, 16))
    ids = data.draw(st.lists(token, max_size=40), label="ids")
    sizes = data.draw(st.lists(st.integers(1, 6), max_size=40), label="chunk sizes")
    skip = data.draw(st.booleans(), label="skip_special_tokens")
    assert_matches_decode(tokenizer, ids, sizes, skip_special_tokens=skip)


@given(data=st.data())
@HYPOTHESIS
def test_random_unicode_text(tokenizer: Tokenizer, data: st.DataObject) -> None:
    """Real encodings of arbitrary unicode, cut anywhere, fed in random chunks."""
    text = data.draw(st.text(max_size=30), label="text")
    ids = tokenizer.encode(text).ids
    cut = data.draw(st.integers(0, len(ids)), label="cut")
    sizes = data.draw(st.lists(st.integers(1, 4), max_size=len(ids)), label="chunk sizes")
    assert_matches_decode(tokenizer, ids[:cut], sizes)


def test_seeded_random_vocabulary_ids(tokenizer: Tokenizer, partial_ids: list[int]) -> None:
    """A cheap, fixed sweep on top of hypothesis: many sequences, every chunking style."""
    rng = random.Random(1234)
    for _ in range(400):
        ids = [mixed_id(rng, partial_ids) for _ in range(rng.randint(1, 30))]
        sizes = [rng.randint(1, 4) for _ in ids]
        assert_matches_decode(tokenizer, ids, sizes, skip_special_tokens=rng.random() < 0.5)


def test_special_tokens(tokenizer: Tokenizer) -> None:
    ids = [*tokenizer.encode("中文").ids, EOS, *tokenizer.encode(" end").ids, EOS]
    assert "".join(stream(tokenizer, ids)) == "中文 end"
    assert "".join(stream(tokenizer, ids, skip_special_tokens=False)) == (
        "中文<|im_end|> end<|im_end|>"
    )


def test_skipped_special_token_between_partial_bytes(tokenizer: Tokenizer) -> None:
    """Skipped tokens vanish before byte decoding, so they do not break a character apart."""
    first, *rest = tokenizer.encode("🤖").ids
    assert_matches_decode(tokenizer, [first, EOS, *rest])
    assert_matches_decode(tokenizer, [first, EOS, *rest], skip_special_tokens=False)


def test_invalid_tail_is_released_by_flush(tokenizer: Tokenizer) -> None:
    """A character cut short by the end of generation comes out as the tokenizer decodes it."""
    ids = tokenizer.encode("ok 🤖").ids[:-1]
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add(ids) == "ok"
    tail = detok.flush()
    assert FFFD in tail
    assert "ok" + tail == tokenizer.decode(ids)


def lone_byte_tokens(tokenizer: Tokenizer) -> list[int]:
    """Ids of the single-byte tokens for bytes 0x80-0xFF: each alone is invalid UTF-8."""
    return [
        token_id
        for token_id in range(VOCAB)
        if len(tokenizer.id_to_token(token_id)) == 1 and tokenizer.decode([token_id]) == FFFD
    ]


class CountingTokenizer:
    """Wraps a tokenizer to record how many ids each decode() call is given."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.window_sizes: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.window_sizes.append(len(ids))
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("kind", ["random vocabulary", "invalid bytes only", "cjk text"])
def test_decode_cost_is_bounded_per_token(
    tokenizer: Tokenizer, partial_ids: list[int], kind: str
) -> None:
    """Long streams never make a step re-decode a long window (no quadratic blow-up)."""
    rng = random.Random(kind)
    if kind == "random vocabulary":
        ids = [mixed_id(rng, partial_ids) for _ in range(3000)]
    elif kind == "invalid bytes only":
        # Lone non-ASCII byte tokens: every window ends in a (genuine) U+FFFD.
        lone = lone_byte_tokens(tokenizer)
        assert len(lone) > 100  # 113: the vocab has no token for some bytes (0xC0, 0xF1, ...)
        ids = [rng.choice(lone) for _ in range(3000)]
    else:
        ids = tokenizer.encode(SAMPLES[1] * 60).ids
    counting = CountingTokenizer(tokenizer)
    detok = IncrementalDetokenizer(counting)  # type: ignore[arg-type]
    pieces = [detok.add([token]) for token in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tokenizer.decode(ids)
    assert max(counting.window_sizes) <= 32
    assert len(counting.window_sizes) <= 4 * len(ids)


def test_empty_input(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add([]) == ""
    assert detok.flush() == ""
    assert detok.text == ""
    assert detok.token_ids == ()


def test_add_after_flush_raises(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer)
    detok.add(tokenizer.encode("hi").ids)
    assert detok.flush() == ""
    assert detok.flush() == ""
    with pytest.raises(RuntimeError):
        detok.add([42])


def test_properties(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("hello 🤖").ids
    detok = IncrementalDetokenizer(tokenizer)
    detok.add(ids[:-1])
    assert detok.text == "hello"
    assert detok.token_ids == tuple(ids[:-1])
    detok.add(ids[-1:])
    assert detok.text == "hello 🤖"
    assert detok.token_ids == tuple(ids)
