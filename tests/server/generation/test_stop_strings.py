"""StopStringMatcher: streamed output must equal the non-streaming cut, whatever the chunking."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from autoglm.server.generation.stop_strings import StopStringMatcher


def naive_cut(full: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The reference: cut the whole text at the earliest occurrence of any stop string."""
    hits = [index for index in (full.find(stop) for stop in stops) if index != -1]
    return (full[: min(hits)], True) if hits else (full, False)


def run(stops: Sequence[str], chunks: Sequence[str]) -> tuple[list[str], bool]:
    """Feeds every chunk (as a server would until the engine stops), then flushes."""
    matcher = StopStringMatcher(stops)
    outputs = []
    for chunk in chunks:
        text, stopped = matcher.feed(chunk)
        outputs.append(text)
        assert stopped == matcher.stopped
    outputs.append(matcher.flush())
    return outputs, matcher.stopped


def test_no_stops_is_pass_through() -> None:
    matcher = StopStringMatcher([])
    for chunk in ["Hello", " <", "/s", ">", ""]:
        assert matcher.feed(chunk) == (chunk, False)
    assert matcher.flush() == ""
    assert not matcher.stopped
    assert matcher.matched is None


def test_text_without_stop_prefix_is_not_held() -> None:
    matcher = StopStringMatcher(["</s>"])
    assert matcher.feed("hello world") == ("hello world", False)
    assert matcher.feed(" more") == (" more", False)


def test_stop_spanning_chunks() -> None:
    matcher = StopStringMatcher(["</s>"])
    assert matcher.feed("hello <") == ("hello ", False)
    assert matcher.feed("/") == ("", False)
    assert matcher.feed("s> ignored") == ("", True)
    assert matcher.matched == "</s>"


def test_stop_inside_one_chunk() -> None:
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("abc STOP def") == ("abc ", True)


def test_after_stop_everything_is_discarded() -> None:
    matcher = StopStringMatcher(["x"])
    assert matcher.feed("ax") == ("a", True)
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""
    assert matcher.stopped


def test_held_prefix_that_does_not_match_is_released_in_order() -> None:
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("a ST") == ("a ", False)
    assert matcher.feed("O") == ("", False)
    assert matcher.feed("P!") == ("", True)
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("a ST") == ("a ", False)
    assert matcher.feed("Ok ") == ("STOk ", False)
    assert matcher.feed("S") == ("", False)
    assert matcher.flush() == "S"
    assert not matcher.stopped


def test_held_prefix_restarts_inside_itself() -> None:
    """'aab' with stop 'ab': the failed candidate at 0 still contains the start of a match."""
    assert run(["ab"], ["a", "a", "b"]) == (["", "a", "", ""], True)
    assert run(["abac"], ["ab", "ab", "x"]) == (["", "ab", "abx", ""], False)
    assert run(["abac"], ["ab", "ab", "ac"]) == (["", "ab", "", ""], True)


def test_overlapping_stops() -> None:
    assert run(["ab", "b"], ["xab"]) == (["x", ""], True)
    assert run(["ab", "b"], ["xa", "b"]) == (["x", "", ""], True)
    assert run(["ab", "b"], ["xb"]) == (["x", ""], True)
    assert run(["ab", "b"], ["xa", "c"]) == (["x", "ac", ""], False)


def test_earliest_match_wins() -> None:
    matcher = StopStringMatcher(["world", "hello"])
    assert matcher.feed("say hello world") == ("say ", True)
    assert matcher.matched == "hello"


def test_ties_go_to_the_first_stop_given() -> None:
    matcher = StopStringMatcher(["ab", "abc"])
    assert matcher.feed("xabc") == ("x", True)
    assert matcher.matched == "ab"


def test_longer_stop_starting_earlier_is_awaited() -> None:
    """After 'abc', 'bc' is complete but 'abcd' may still start earlier: wait for more text."""
    matcher = StopStringMatcher(["abcd", "bc"])
    assert matcher.feed("abc") == ("", False)
    assert matcher.feed("d") == ("", True)
    assert matcher.matched == "abcd"

    matcher = StopStringMatcher(["abcd", "bc"])
    assert matcher.feed("abc") == ("", False)
    assert matcher.feed("x") == ("a", True)
    assert matcher.matched == "bc"

    matcher = StopStringMatcher(["abcd", "bc"])
    assert matcher.feed("abc") == ("", False)
    assert matcher.flush() == "a"  # generation ended: the complete 'bc' now decides
    assert matcher.stopped
    assert matcher.matched == "bc"


def test_unicode_stops() -> None:
    assert run(["。"], ["你好", "。再见"]) == (["你好", "", ""], True)
    assert run(["结束"], ["好的", "结", "束了"]) == (["好的", "", "", ""], True)
    assert run(["👋🏽"], ["hi 👋", "🏽 bye"]) == (["hi ", "", ""], True)
    assert run(["👋🏽"], ["hi 👋", "🏿 bye"]) == (["hi ", "👋🏿 bye", ""], False)
    family = "👨‍👩‍👧"
    chunks = list("x" + family + "y")  # one code point at a time, ZWJs included
    outputs, stopped = run([family], chunks)
    assert ("".join(outputs), stopped) == ("x", True)


def test_flush_releases_held_text() -> None:
    matcher = StopStringMatcher(["###"])
    assert matcher.feed("a#") == ("a", False)
    assert matcher.feed("#") == ("", False)
    assert matcher.flush() == "##"
    assert matcher.flush() == ""
    assert not matcher.stopped


def test_duplicate_stops_are_fine() -> None:
    assert run(["x", "x"], ["abxc"]) == (["ab", ""], True)


def test_invalid_stops() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])
    with pytest.raises(TypeError):
        StopStringMatcher("stop")


def random_chunks(rng: random.Random, text: str) -> list[str]:
    chunks = []
    pos = 0
    while pos < len(text):
        size = rng.choice([0, 1, 1, 2, 3, 5, 8])
        chunks.append(text[pos : pos + size])
        pos += size
    return chunks


def test_randomized_against_naive_reference() -> None:
    """Small alphabets make overlaps, self-overlaps and near misses common."""
    rng = random.Random(20240611)
    for case in range(4000):
        alphabet = rng.choice(["ab", "abc", "ab ", "aé👋"])
        stops = [
            "".join(rng.choices(alphabet, k=rng.randint(1, 5))) for _ in range(rng.randint(0, 3))
        ]
        full = "".join(rng.choices(alphabet, k=rng.randint(0, 30)))
        chunks = random_chunks(rng, full)
        max_hold = max((len(stop) - 1 for stop in stops), default=0)

        matcher = StopStringMatcher(stops)
        emitted = ""
        seen = ""
        stopped = False
        for chunk in chunks:
            text, stopped = matcher.feed(chunk)
            emitted += text
            if stopped:
                break
            seen += chunk
            # Only a possible stop prefix is held back, never more.
            assert seen.startswith(emitted), (case, stops, chunks)
            assert len(seen) - len(emitted) <= max_hold, (case, stops, chunks)
        if not stopped:
            emitted += matcher.flush()
            stopped = matcher.stopped
        assert (emitted, stopped) == naive_cut(full, stops), (case, stops, chunks)
