"""Incremental detokenization for streamed generation.

The façade receives token ids one (or a few) at a time from the engine and must stream text.
Decoding each new token on its own is wrong for byte-level BPE: a multi-byte UTF-8 character
(CJK, emoji, a ZWJ sequence) is often split over several tokens, and decoding a partial
character yields U+FFFD. Re-decoding every id on each step is correct but quadratic.

This module uses the prefix_offset/read_offset technique of vLLM
(`vllm/transformers_utils/detokenizer_utils.py`, `detokenize_incrementally`) and TGI
(`server/text_generation_server/models/model.py`, `decode_token`): each step decodes only a short
window `ids[prefix_offset:]`, and subtracts the decode of the already-emitted context
`ids[prefix_offset:read_offset]`. Decoding the window *with* a little already-emitted context
(rather than the new ids alone) keeps decoders that treat the first token specially (e.g. a
SentencePiece leading-space strip) consistent with a full decode.

Pure logic: no I/O, so it is tested without gRPC or Triton.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

__all__ = ["IncrementalDetokenizer"]

# What a lossy UTF-8 decode (Rust's `String::from_utf8_lossy`, used by the ByteLevel decoder)
# yields for an incomplete or invalid byte sequence.
_REPLACEMENT = "\ufffd"
# The decoding window may grow to this many ids before its start moves up to the emitted text.
# Each move costs a second tokenizer call (decoding the new context); a few more ids per call cost
# next to nothing (the call overhead dominates: ~2.7 µs for 2 ids), so moving every ~8 ids
# instead of every step halves the calls. More context never makes a decode less exact.
_CONTEXT_IDS = 8


class IncrementalDetokenizer:
    """Turns a growing list of token ids into newly completed text, one call per step.

    Invariant: ``"".join(add(...) outputs) + flush() == tokenizer.decode(all ids)``, and text is
    only emitted once it cannot change, so a streamed piece never carries a U+FFFD that the full
    decode would not have at that position.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        # ids[:prefix_offset] are no longer decoded at all; ids[prefix_offset:read_offset] have
        # been emitted and serve as decoding context; ids[read_offset:] are held back.
        self._prefix_offset = 0
        self._read_offset = 0
        # decode(ids[prefix_offset:read_offset]), cached: it only changes when the offsets move.
        self._prefix_text = ""
        self._pieces: list[str] = []
        self._flushed = False

    @property
    def token_ids(self) -> tuple[int, ...]:
        """All ids added so far (a copy, so callers cannot desynchronise the offsets)."""
        return tuple(self._ids)

    @property
    def text(self) -> str:
        """All text emitted so far (by add() and flush())."""
        return "".join(self._pieces)

    def add(self, ids: Sequence[int]) -> str:
        """Appends ``ids`` and returns the text they complete ("" while a character is partial)."""
        if self._flushed:
            # Held-back bytes were already released by flush(); new ids could have completed them.
            raise RuntimeError("add() after flush(): the detokenizer is finished")
        if not ids:
            return ""
        self._ids.extend(ids)
        new_text = self._decode(self._prefix_offset, len(self._ids))
        if not new_text.endswith(_REPLACEMENT):
            return self._advance(new_text, len(self._ids))
        if len(self._ids) - self._read_offset > 1:
            # Several ids are held: the complete text before the partial character, or a run of
            # genuinely invalid bytes, can still go out now.
            return self._release_stable_part(new_text)
        return ""

    def flush(self) -> str:
        """Returns the held-back tail at the end of generation, decoded as the tokenizer does.

        A tail that is genuinely invalid UTF-8 therefore comes out as U+FFFD, exactly like the
        full decode. Further add() calls raise.
        """
        if self._flushed:
            return ""
        self._flushed = True
        if len(self._ids) == self._read_offset:
            return ""
        return self._advance(self._decode(self._prefix_offset, len(self._ids)), len(self._ids))

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(
            self._ids[start:end], skip_special_tokens=self._skip_special_tokens
        )

    def _advance(self, window_text: str, end: int) -> str:
        """Emits ``window_text`` (the decode of ids[prefix_offset:end]) beyond the context."""
        piece = window_text[len(self._prefix_text) :]
        if not piece:
            # Only ids that decode to nothing (e.g. skipped special tokens): keep the old context,
            # which a later token may still need, but stop re-reading these ids as held.
            self._read_offset = end
            self._prefix_text = window_text
            return ""
        if end - self._prefix_offset <= _CONTEXT_IDS:
            # Fast path: keep the window's start, so the new context's decode is the window's,
            # already at hand — one tokenizer call per step instead of two.
            self._read_offset = end
            self._prefix_text = window_text
        else:
            self._prefix_offset, self._read_offset = self._read_offset, end
            self._prefix_text = self._decode(self._prefix_offset, self._read_offset)
        self._pieces.append(piece)
        return piece

    def _release_stable_part(self, window_text: str) -> str:
        """Emits the longest held part that later ids can no longer change.

        A split ``m`` is safe when the decode of ids[prefix_offset:m] does not end in U+FFFD (it
        ends on a complete character, where a lossy UTF-8 decoder starts afresh), or when the
        decodes of both sides concatenate to the joint decode and the right side is not empty:
        splitting a valid or incomplete sequence always produces an extra U+FFFD, so nothing
        straddles ``m`` and the bytes after it already fix how the left side ends. The second
        rule is what keeps a run of invalid bytes from growing the window, hence the per-token
        cost, without bound.
        """
        end = len(self._ids)
        for split in range(end - 1, self._read_offset, -1):
            left = self._decode(self._prefix_offset, split)
            if len(left) <= len(self._prefix_text):
                continue
            if not left.endswith(_REPLACEMENT):
                return self._advance(left, split)
            right = self._decode(split, end)
            if right and left + right == window_text:
                return self._advance(left, split)
        return ""
