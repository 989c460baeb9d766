"""A Hugging Face checkpoint folder: sha256 of every file, checked against a list, and its shape.

The expected list is either a `sha256sum` file (`<64 hex>  <relative path>` per line, `*` before
the path in binary mode: what `sha256sum $(find . -type f)` prints, or what a publisher ships)
or a manifest.json written by `autoglm build vllm-profile` (its `extra.checkpoint.files`).
Every file of the folder must be listed and match, and every listed file must exist: a partial
copy, a swapped shard or an extra pickled file fails before any engine loads it.

Dot-folders (`.cache/` that `huggingface-cli download --local-dir` leaves, `.git/`) are not part
of the checkpoint and are skipped.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

from autoglm.build_engine.manifest import sha256_file

_SHA_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
# safetensors: an 8-byte little-endian header length, then a JSON header. 100 MB is far above
# any real header (a 10B model's is ~100 KB) and keeps a corrupt length from a huge read.
_MAX_HEADER = 100 * 1000 * 1000


class CheckpointError(ValueError):
    """The checkpoint does not match its list, or a list/header cannot be read."""


def checkpoint_files(root: Path) -> list[str]:
    """Relative paths of the checkpoint's regular files (following links), sorted."""
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file():
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def hash_checkpoint(root: Path) -> dict[str, str]:
    """sha256 of every checkpoint file (20 GB reads in a minute or two on a GPU host)."""
    return {rel: sha256_file(root / rel) for rel in checkpoint_files(root)}


def parse_sha256sum(text: str, *, source: str) -> dict[str, str]:
    """`sha256sum` output → {relative path: hex digest} (CheckpointError naming the line)."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _SHA_LINE.match(line)
        if not match:
            raise CheckpointError(f"{source}:{number}: not '<sha256>  <path>': {line[:80]!r}")
        rel = match.group(2).removeprefix("./")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise CheckpointError(f"{source}:{number}: path {rel!r} leaves the checkpoint")
        out[rel] = match.group(1).lower()
    if not out:
        raise CheckpointError(f"{source}: no checksums")
    return out


def read_expected(path: Path) -> dict[str, str]:
    """The expected checksums from a sha256sum file or a vllm-profile manifest.json."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        try:
            files = json.loads(text)["extra"]["checkpoint"]["files"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{path}: no extra.checkpoint.files in this manifest") from None
        if not isinstance(files, dict) or not files:
            raise CheckpointError(f"{path}: extra.checkpoint.files is empty")
        return {str(k): str(v).lower() for k, v in files.items()}
    return parse_sha256sum(text, source=str(path))


def compare(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """Every difference between two {path: sha256} maps ([] when they are the same)."""
    problems: list[str] = []
    for rel, digest in sorted(expected.items()):
        if rel not in actual:
            problems.append(f"missing {rel}")
        elif actual[rel] != digest:
            problems.append(
                f"checksum mismatch {rel}: expected {digest[:12]}…, got {actual[rel][:12]}…"
            )
    problems += [f"unexpected file {rel}" for rel in sorted(set(actual) - set(expected))]
    return problems


def verify(root: Path, expected: Mapping[str, str], *, source: str) -> dict[str, str]:
    """Hash the checkpoint and compare; CheckpointError listing every difference."""
    actual = hash_checkpoint(root)
    problems = compare(expected, actual)
    if problems:
        raise CheckpointError(f"{root} does not match {source}: " + "; ".join(problems))
    return actual


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from a .safetensors file's header (the data is not read)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: too short for a safetensors header")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise CheckpointError(f"{path}: header length {size} is not plausible")
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: unreadable safetensors header")
    return {
        name: tuple(int(d) for d in info["shape"])
        for name, info in header.items()
        if name != "__metadata__" and isinstance(info, dict)
    }


def checkpoint_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape across the checkpoint's .safetensors files ({} if there are none)."""
    out: dict[str, tuple[int, ...]] = {}
    for rel in checkpoint_files(root):
        if rel.endswith(".safetensors"):
            out.update(safetensors_shapes(root / rel))
    return out
