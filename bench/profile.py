"""Where the façade's CPU goes: py-spy on the façade process, summarized (summary is pure).

`py-spy record --format raw` writes collapsed stacks ("outer;…;leaf count" per line). The
summary gives each function's self share (it was the leaf) and total share (it was on the stack).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_LOCATION = re.compile(r" \((.*)\)$")
_PREFIXES = (
    re.compile(r"^.*/site-packages/"),
    re.compile(r"^.*/lib/python[\d.]+/"),
    re.compile(r"^.*/(?=server/)"),
)


@dataclass(frozen=True, slots=True)
class FrameShare:
    frame: str
    self_pct: float
    total_pct: float


def _short(frame: str) -> str:
    """'fn (/long/path/site-packages/grpc/aio/_call.py:123)' → 'fn (grpc/aio/_call.py:123)'."""

    def shorten(m: re.Match[str]) -> str:
        location = m.group(1)
        for prefix in _PREFIXES:
            location = prefix.sub("", location, count=1)
        return f" ({location})"

    return _LOCATION.sub(shorten, frame)


# Where a sample's time goes: the innermost frame that belongs to a known area (order matters).
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("façade code (autoglm server/)", ("server/", "/autoglm/")),
    ("tracing (opentelemetry)", ("opentelemetry/",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging", ("logging/",)),
    ("tokenizers", ("tokenizers/", "tokenizers.")),
    ("protobuf", ("google/protobuf", "_message.", "upb")),
    ("grpc (python, Cython, C core)", ("grpc/", "grpc_", "cygrpc", "_cython")),
    ("asyncio event loop", ("asyncio/", "selectors.py", "epoll")),
    ("threading", ("threading.py",)),
)


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for area, needles in AREAS:
            if any(n in frame for n in needles):
                return area
    return "other"


def by_area(text: str) -> dict[str, float]:
    """Share (%) of samples per area, each sample counted for its innermost known frame."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            counts[_area(m.group(1).split(";"))] += int(m.group(2))
    total = sum(counts.values())
    return {a: 100 * c / total for a, c in counts.most_common()} if total else {}


def summarize_collapsed(text: str, top: int = 25) -> tuple[int, list[FrameShare]]:
    """(samples, the `top` frames by self share, with their total share)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        frames = [_short(f) for f in m.group(1).split(";") if f]
        n = int(m.group(2))
        samples += n
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        return 0, []
    return samples, [
        FrameShare(f, 100 * c / samples, 100 * total[f] / samples) for f, c in own.most_common(top)
    ]


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.is_file() else shutil.which("py-spy")


def start_py_spy(
    pid: int,
    seconds: float,
    out: Path,
    *,
    rate: int = 200,
    native: bool = True,
    subprocesses: bool = False,
) -> subprocess.Popen[bytes]:
    """py-spy record in the background. `native` also samples C/Cython frames (grpc's aio core
    is Cython: without it its time shows up as asyncio's Handle._run); it pauses the process per
    sample, so profiled runs are never the measured ones."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
    mode = ["--native"] if native else ["--nonblocking"]
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    cmd += [*mode, "--format", "raw", "--output", str(out)]
    if subprocesses:  # `serve --workers N`: the supervisor's worker processes
        cmd.append("--subprocesses")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
