"""What to send: prompts and output lengths drawn from seeded distributions (pure, no I/O).

Prompts are cut from a fixed English text at a token count drawn from the prompt-length
distribution; the façade gets the text, the direct path the same text's token ids (encoded by
the model's own tokenizer), so both paths ask the engine for the same work.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Public-domain English (Jane Austen, Pride and Prejudice, ch. 1): real words, so the façade's
# incremental detokenizer and the synthetic engine's id cycle see ordinary text.
CORPUS = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered the rightful property of some one or other of "
    "their daughters. My dear Mr. Bennet, said his lady to him one day, have you heard that "
    "Netherfield Park is let at last? Mr. Bennet replied that he had not. But it is, returned "
    "she; for Mrs. Long has just been here, and she told me all about it. Mr. Bennet made no "
    "answer. Do you not want to know who has taken it? cried his wife impatiently. You want to "
    "tell me, and I have no objection to hearing it. This was invitation enough. "
)


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A token count: fixed ("128") or uniform over an inclusive range ("64-256")."""

    low: int
    high: int

    @staticmethod
    def parse(text: str) -> LengthDist:
        lo, sep, hi = text.partition("-")
        try:
            low, high = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"length {text!r}: use N or LOW-HIGH") from None
        if low < 1 or high < low:
            raise ValueError(f"length {text!r}: need 1 <= LOW <= HIGH")
        return LengthDist(low, high)

    def sample(self, rng: random.Random) -> int:
        return self.low if self.low == self.high else rng.randint(self.low, self.high)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True, slots=True)
class BenchRequest:
    prompt: str
    prompt_ids: tuple[int, ...]
    max_tokens: int


Encode = Callable[[str], Sequence[int]]
Decode = Callable[[Sequence[int]], str]


class Workload:
    """An endless, reproducible sequence of requests (the same seed → the same requests)."""

    def __init__(
        self,
        prompt_len: LengthDist,
        output_len: LengthDist,
        encode: Encode,
        decode: Decode,
        *,
        seed: int = 0,
        pool_size: int = 64,
    ) -> None:
        rng = random.Random(seed)
        corpus_ids = list(encode(CORPUS))
        self._pool: list[BenchRequest] = []
        for _ in range(pool_size):
            n = prompt_len.sample(rng)
            offset = rng.randrange(len(corpus_ids))
            ids = [corpus_ids[(offset + i) % len(corpus_ids)] for i in range(n)]
            text = decode(ids)
            self._pool.append(BenchRequest(text, tuple(encode(text)), output_len.sample(rng)))
        self._next = 0

    def next(self) -> BenchRequest:
        req = self._pool[self._next % len(self._pool)]
        self._next += 1
        return req


def token_cycle(encode: Encode, *, length: int = 256) -> list[int]:
    """Real vocabulary ids for the synthetic engine to stream: the corpus, tokenized."""
    ids = list(encode(CORPUS))
    return (ids * (length // len(ids) + 1))[:length]
