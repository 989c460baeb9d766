"""The text of a generation as vLLM streams it: incremental detokenization and stop strings.

Pure (a `tokenizers.Tokenizer` in, strings out). The engine models never import the façade, so
this is its own small copy of the idea in server/generation/detokenizer.py, which follows vLLM
(`vllm/transformers_utils/detokenizer_utils.py::detokenize_incrementally`): each step decodes a
short window of ids and subtracts the decode of the already-emitted context; a window whose decode
ends in U+FFFD (a UTF-8 character split across byte-level tokens) is held back until a later
token completes it, so a streamed piece never carries a replacement character that the full
decode would not.

Stop strings follow vLLM v1 (`vllm/v1/engine/detokenizer.py`, `check_stop_strings` and
`get_next_output_text`): after each token the new text, plus the last `len(stop) - 1` characters
before it, is searched for each stop string; a hit truncates the text before it and ends the
generation (finish reason "stop"). While generating, the last `max(len(stop)) - 1` characters are
held back, so a stop string that is still being completed never goes out.
"""

from __future__ import annotations

from tokenizers import Tokenizer

__all__ = ["TextOutput"]

_REPLACEMENT = "\ufffd"


class TextOutput:
    """Turns generated token ids into new text, one call per token; knows when a stop hit."""

    def __init__(
        self, tokenizer: Tokenizer, *, stop: tuple[str, ...], skip_special_tokens: bool
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stop = tuple(s for s in stop if s)  # vLLM drops empty stop strings
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix_offset = 0  # ids[prefix_offset:read_offset]: emitted, decoding context
        self._read_offset = 0  # ids[read_offset:]: not yet decoded into text
        self._text = ""  # all decoded text (truncated at a stop string)
        self._sent = 0  # characters of _text already returned
        self.stopped = False

    def add(self, token: int) -> str:
        """Adds one generated token; returns the text that may go out now ("" while held)."""
        if self.stopped:
            raise RuntimeError("add() after a stop string ended the text")
        self._ids.append(token)
        before = len(self._text)
        self._decode_new(final=False)
        self._check_stop(new_chars=len(self._text) - before)
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """The held-back rest at the end of generation (a lone partial character decodes as
        U+FFFD, as in the full decode)."""
        if not self.stopped:
            before = len(self._text)
            self._decode_new(final=True)
            self._check_stop(new_chars=len(self._text) - before)
        return self._release(final=True)

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(
            self._ids[start:end], skip_special_tokens=self._skip_special_tokens
        )

    def _decode_new(self, *, final: bool) -> None:
        if self._read_offset == len(self._ids):
            return
        prefix = self._decode(self._prefix_offset, self._read_offset)
        window = self._decode(self._prefix_offset, len(self._ids))
        if window.endswith(_REPLACEMENT) and not final:
            return  # a character still being completed: wait for the next token
        if len(window) > len(prefix):
            self._text += window[len(prefix) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        # else: only ids that decode to nothing so far (skipped specials): keep the window

    def _check_stop(self, *, new_chars: int) -> None:
        if not self._stop or new_chars <= 0:
            return
        for stop in self._stop:
            # vLLM: output_text.find(stop, 1 - new_char_count - len(stop)), i.e. from the
            # earliest place where a stop string could end inside the new characters.
            start = max(0, len(self._text) - new_chars - len(stop) + 1)
            index = self._text.find(stop, start)
            if index != -1:
                self._text = self._text[:index]
                self.stopped = True
                return

    def _release(self, *, final: bool) -> str:
        end = len(self._text) if final else max(self._sent, len(self._text) - self._hold)
        piece = self._text[self._sent : end]
        self._sent = end
        return piece
