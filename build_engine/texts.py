"""Local calibration / held-out text: read a file or a folder, cut it into token chunks.

Nothing is downloaded: the defaults are the small texts shipped in `build_engine/data/`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

DATA = Path(str(resources.files(__package__) / "data"))
DEFAULT_CALIBRATION = DATA / "calibration.txt"
DEFAULT_HELDOUT = DATA / "heldout.txt"


class TextError(ValueError):
    """A calibration or held-out text is missing or empty."""


def load_texts(path: Path) -> list[str]:
    """Paragraphs (blank-line separated) of a .txt file, or of every *.txt in a folder (sorted)."""
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise TextError(f"{path}: folder holds no *.txt file")
    elif path.is_file():
        files = [path]
    else:
        raise TextError(f"{path}: no such file or folder")
    paragraphs: list[str] = []
    for f in files:
        for block in f.read_text(encoding="utf-8").split("\n\n"):
            if block.strip():
                paragraphs.append(block.strip())
    if not paragraphs:
        raise TextError(f"{path}: no text")
    return paragraphs


def token_chunks(
    encode: Callable[[str], Sequence[int]],
    texts: Sequence[str],
    *,
    chunk_len: int,
    max_chunks: int,
) -> list[list[int]]:
    """Concatenate the encoded texts and cut them into up to `max_chunks` chunks of `chunk_len`.

    The last partial chunk is kept when it has at least 2 tokens (one scored position), so a
    short text still gives something to calibrate on.
    """
    if chunk_len < 2 or max_chunks < 1:
        raise ValueError("chunk_len must be >= 2 and max_chunks >= 1")
    stream: list[int] = []
    for text in texts:
        stream.extend(encode(text + "\n\n"))
        if len(stream) >= chunk_len * max_chunks:
            break
    chunks = [stream[i : i + chunk_len] for i in range(0, len(stream), chunk_len)]
    chunks = [c for c in chunks if len(c) >= 2][:max_chunks]
    if not chunks:
        raise TextError("text gave no tokens")
    return chunks
