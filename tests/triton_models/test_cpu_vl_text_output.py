"""TextOutput: incremental text that never splits a UTF-8 character, and vLLM's stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from autoglm.triton_models.cpu_vl.text_output import TextOutput


@pytest.fixture(scope="module")
def tokenizer(vlm_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(vlm_dir / "tokenizer.json"))


def stream(
    tokenizer: Tokenizer, text: str, *, stop: tuple[str, ...] = (), skip: bool = True
) -> tuple[list[str], TextOutput]:
    out = TextOutput(tokenizer, stop=stop, skip_special_tokens=skip)
    pieces = []
    for token in tokenizer.encode(text, add_special_tokens=False).ids:
        pieces.append(out.add(token))
        if out.stopped:
            break
    pieces.append(out.finish())
    return pieces, out


def test_multibyte_characters_split_over_tokens_are_held_until_complete(
    tokenizer: Tokenizer,
) -> None:
    text = "héllo 世界 🙂 done"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text.split())  # the CJK and emoji characters take several tokens
    pieces, out = stream(tokenizer, text)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert not out.stopped


def test_an_incomplete_character_at_the_end_decodes_as_the_full_decode_does(
    tokenizer: Tokenizer,
) -> None:
    ids = tokenizer.encode("ok 世", add_special_tokens=False).ids[:-1]  # cut inside "世"
    out = TextOutput(tokenizer, stop=(), skip_special_tokens=True)
    pieces = [out.add(t) for t in ids]
    pieces.append(out.finish())
    assert "".join(pieces) == tokenizer.decode(ids)
    assert pieces[-1].endswith("\ufffd")


def test_special_tokens_are_skipped_or_kept(tokenizer: Tokenizer) -> None:
    text = "<think>plan</think><answer>do()</answer>"
    assert "".join(stream(tokenizer, text)[0]) == "plando()"
    assert "".join(stream(tokenizer, text, skip=False)[0]) == text


def test_a_stop_string_ends_the_text_before_it(tokenizer: Tokenizer) -> None:
    pieces, out = stream(tokenizer, "Hello world, stop here please", stop=("stop here",))
    assert out.stopped
    assert "".join(pieces) == "Hello world, "


def test_the_first_of_several_stop_strings_in_the_text_wins(tokenizer: Tokenizer) -> None:
    pieces, out = stream(tokenizer, "one two three four", stop=("four", "two"))
    assert out.stopped
    assert "".join(pieces) == "one "


def test_text_that_may_start_a_stop_string_is_held_back(tokenizer: Tokenizer) -> None:
    out = TextOutput(tokenizer, stop=("XYZ",), skip_special_tokens=True)
    sent = ""
    for token in tokenizer.encode("abc XY", add_special_tokens=False).ids:
        sent += out.add(token)
    assert sent == "abc "  # the last len("XYZ") - 1 characters wait
    for token in tokenizer.encode("W", add_special_tokens=False).ids:
        sent += out.add(token)
    sent += out.finish()
    assert sent == "abc XYW"
    assert not out.stopped


def test_without_stop_strings_nothing_is_held(tokenizer: Tokenizer) -> None:
    out = TextOutput(tokenizer, stop=(), skip_special_tokens=True)
    sent = "".join(out.add(t) for t in tokenizer.encode("abc", add_special_tokens=False).ids)
    assert sent == "abc"
    assert out.finish() == ""
