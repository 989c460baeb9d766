"""Stop strings over streamed text.

Stop strings are matched on detokenized text, not on token ids: one string can be produced by
many different token sequences, and a stop can span several streamed chunks. Text that might be
the start of a stop string is held back until it is known not to be one, so the client never sees
any part of a stop string.

The result is exactly that of the non-streaming rule "cut the full text at the earliest
occurrence of any stop string" (``min(full.find(s) for s in stops)``), whatever the chunking:
when a stop is complete but a longer stop could still start earlier (stops "abcd" and "bc" after
"abc"), the matcher waits for the next chunk instead of cutting at "bc".

Pure logic: no I/O, so it is tested without gRPC or Triton.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopStringMatcher"]


class StopStringMatcher:
    """Filters a stream of text chunks, cutting it before the earliest stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            # A bare str is a Sequence[str] of characters: almost certainly a caller bug.
            raise TypeError("stops must be a sequence of strings, not a single str")
        for stop in stops:
            if not stop:
                # "" occurs at position 0 of every text: it would stop before any output.
                raise ValueError("stop strings must be non-empty")
        # Deduplicated, first occurrence kept, so ties are reported in the caller's order.
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(stops))
        # Proper prefixes of the stops: a buffered suffix in this set may still become a stop.
        self._prefixes: frozenset[str] = frozenset(
            stop[:i] for stop in self._stops for i in range(1, len(stop))
        )
        self._max_prefix_len = max((len(stop) - 1 for stop in self._stops), default=0)
        self._buffer = ""
        self._stopped = False
        self._matched: str | None = None

    @property
    def stopped(self) -> bool:
        """Whether a stop string was found (by feed() or flush())."""
        return self._stopped

    @property
    def matched(self) -> str | None:
        """The stop string that ended the text (for a finish reason), or None."""
        return self._matched

    def feed(self, text: str) -> tuple[str, bool]:
        """Adds a chunk; returns (text safe to emit now, stopped).

        Once stopped, returns ("", True): the rest of the generation is discarded, which lets a
        caller keep feeding until the engine has been told to stop.
        """
        if self._stopped:
            return "", True
        if not self._stops:
            return text, False
        window = self._buffer + text
        match = self._earliest_match(window)
        held = self._held_start(window)
        if match is not None and (held is None or held >= match[0]):
            # No stop can start before this one any more: cut here.
            return self._stop(window, match), True
        # Either no stop yet, or one that a longer stop starting earlier may still pre-empt.
        cut = len(window) if held is None else held
        self._buffer = window[cut:]
        return window[:cut], False

    def flush(self) -> str:
        """Releases held-back text at the end of generation (minus a stop, if it holds one)."""
        if self._stopped:
            return ""
        window, self._buffer = self._buffer, ""
        match = self._earliest_match(window)
        if match is not None:
            return self._stop(window, match)
        return window

    def _stop(self, window: str, match: tuple[int, str]) -> str:
        index, stop = match
        self._stopped = True
        self._matched = stop
        self._buffer = ""
        return window[:index]

    def _earliest_match(self, window: str) -> tuple[int, str] | None:
        """(index, stop) of the earliest complete stop in ``window``; ties go to the first stop."""
        best: tuple[int, str] | None = None
        for stop in self._stops:
            index = window.find(stop)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        return best

    def _held_start(self, window: str) -> int | None:
        """Start of the longest suffix of ``window`` that is a proper prefix of some stop.

        Every position where a not-yet-complete stop could start lies in that suffix, since each
        shorter candidate suffix is a suffix of it.
        """
        for start in range(max(0, len(window) - self._max_prefix_len), len(window)):
            if window[start:] in self._prefixes:
                return start
        return None
