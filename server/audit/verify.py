"""Verification of the audit log's hash chain, and `autoglm audit verify`.

Reads the files `AuditWriter` (writer.py) writes, in rotation order, and names the first record
that was edited, deleted, reordered or is not valid JSON. Separate from the writer: it runs as a
command on any host that holds a copy of the log, with no server around.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.server.audit.anchor import Anchor, read_anchors
from autoglm.server.audit.writer import (
    DEFAULT_NAME,
    GENESIS,
    canonical_json,
    record_hash,
    rotated_files,
)

__all__ = [
    "AnchorProblem",
    "VerifyProblem",
    "VerifyResult",
    "audit_cli",
    "check_anchors",
    "verify",
    "verify_dir",
]


@dataclass(frozen=True)
class VerifyProblem:
    file: Path
    line: int  # 1-based
    seq: int | None  # None when the line cannot be parsed
    reason: str  # edited | deleted | reordered | bad json | broken link
    detail: str

    def __str__(self) -> str:
        seq = "?" if self.seq is None else str(self.seq)
        return f"{self.file}:{self.line} seq={seq}: {self.reason}: {self.detail}"


@dataclass(frozen=True)
class VerifyResult:
    files: tuple[Path, ...]
    records: int  # records checked before the first problem (all of them when ok)
    first_seq: int | None
    head: tuple[int, str] | None  # (seq, hash) of the last good record
    anchored: bool  # the chain starts at GENESIS (False when older files were rotated away)
    problem: VerifyProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class _Line:
    file: Path
    number: int
    entry: dict[str, Any] | None
    error: str | None = None
    raw: bytes = b""

    @property
    def seq(self) -> int | None:
        return self.entry["seq"] if self.entry is not None else None


def _read_lines(paths: Sequence[Path]) -> Iterator[_Line]:
    for path in paths:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                yield _parse_line(path, number, raw)


def _parse_line(path: Path, number: int, raw: bytes) -> _Line:
    try:
        entry = json.loads(raw)
    except ValueError as err:
        return _Line(path, number, None, f"not JSON ({err.msg})")
    if not isinstance(entry, dict):
        return _Line(path, number, None, "not a JSON object")
    seq, prev, digest = entry.get("seq"), entry.get("prev"), entry.get("hash")
    if not (type(seq) is int and isinstance(prev, str) and isinstance(digest, str)):
        return _Line(path, number, None, "missing or mistyped seq/prev/hash")
    return _Line(path, number, entry, raw=raw.rstrip(b"\n"))


def verify(paths: Iterable[Path | str], *, require_genesis: bool = False) -> VerifyResult:
    """Checks the chain through `paths` (oldest first) and reports the first bad record.

    Without `require_genesis`, the first record may link to a record that is no longer present
    (older files dropped by rotation); `anchored` says whether the chain starts at GENESIS.
    """
    files = tuple(Path(p) for p in paths)
    lines = _read_lines(files)
    current = next(lines, None)
    count, first_seq, anchored = 0, None, False
    head: tuple[int, str] | None = None
    while current is not None:
        following = next(lines, None)
        problem = _check(current, head, following, require_genesis=require_genesis)
        if problem is not None:
            return VerifyResult(files, count, first_seq, head, anchored, problem)
        assert current.entry is not None  # _check reports unparsed lines
        if head is None:
            first_seq, anchored = current.entry["seq"], current.entry["prev"] == GENESIS
        head = (current.entry["seq"], current.entry["hash"])
        count += 1
        current = following
    return VerifyResult(files, count, first_seq, head, anchored, None)


def _check(
    line: _Line, head: tuple[int, str] | None, following: _Line | None, *, require_genesis: bool
) -> VerifyProblem | None:
    def problem(reason: str, detail: str) -> VerifyProblem:
        return VerifyProblem(line.file, line.number, line.seq, reason, detail)

    if line.entry is None:
        return problem("bad json", line.error or "unreadable line")
    entry = line.entry
    if record_hash(entry) != entry["hash"]:
        return problem("edited", "the record does not match its hash")
    if canonical_json(entry) != line.raw:
        # The writer only writes canonical JSON. A non-canonical line with a valid hash was
        # edited so that parsers disagree, e.g. a duplicated key (json keeps the last one,
        # other parsers the first).
        return problem("edited", "the line is not in canonical form")
    if head is None:
        return _check_start(entry, require_genesis, problem)
    expected = head[0] + 1
    if entry["seq"] > expected:
        if following is not None and following.seq == expected:
            return problem("reordered", f"seq {entry['seq']} comes before seq {expected}")
        return problem("deleted", f"seq jumps from {head[0]} to {entry['seq']}")
    if entry["seq"] < expected:
        return problem("reordered", f"seq {entry['seq']} after seq {head[0]}")
    if entry["prev"] != head[1]:
        return problem("broken link", f"prev does not match the hash of seq {head[0]}")
    return None


def _check_start(
    entry: dict[str, Any], require_genesis: bool, problem: Callable[[str, str], VerifyProblem]
) -> VerifyProblem | None:
    at_genesis = entry["prev"] == GENESIS
    if at_genesis and entry["seq"] != 1:
        return problem("broken link", f"seq {entry['seq']} links to GENESIS")
    if entry["seq"] == 1 and not at_genesis:
        return problem("broken link", "seq 1 does not link to GENESIS")
    if require_genesis and not at_genesis:
        return problem("deleted", f"the chain starts at seq {entry['seq']}, not at seq 1")
    return None


def verify_dir(
    directory: Path | str, *, name: str = DEFAULT_NAME, require_genesis: bool = False
) -> VerifyResult:
    """`verify` over the rotation set of `directory/name`, oldest file first."""
    files = rotated_files(Path(directory) / name)
    if not files:
        raise FileNotFoundError(f"no audit log {name} in {directory}")
    return verify(files, require_genesis=require_genesis)


@dataclass(frozen=True)
class AnchorProblem:
    anchor: Anchor
    reason: str  # truncated | rewritten
    detail: str

    def __str__(self) -> str:
        return f"anchor seq={self.anchor.seq} ({self.anchor.time}): {self.reason}: {self.detail}"


def select_chain(anchors: Sequence[Anchor], chain: str | None) -> list[Anchor]:
    """The anchors of one chain: `chain`, or the only chain the anchors name."""
    names = sorted({a.chain for a in anchors})
    if chain is None:
        if len(names) > 1:
            raise ValueError(f"the anchor file holds several chains; name one (--chain): {names}")
        return list(anchors)
    chosen = [a for a in anchors if a.chain == chain]
    if not chosen:
        raise ValueError(f"no anchor of chain {chain!r}; the file holds {names}")
    return chosen


def check_anchors(
    paths: Sequence[Path], result: VerifyResult, anchors: Sequence[Anchor]
) -> AnchorProblem | None:
    """The first anchor the (already verified) chain contradicts, None if it keeps them all.

    A chain that ends before the newest anchored seq was truncated; an anchored seq present
    with another hash was rewritten (the chain recomputed from an edit onwards). Anchors
    older than the first record present (rotated away) cannot be checked and are skipped.
    """
    if not anchors:
        return None
    newest = max(anchors, key=lambda a: a.seq)
    end = result.head[0] if result.head else 0
    if newest.seq > end:
        return AnchorProblem(
            newest, "truncated", f"the anchor records seq {newest.seq} but the chain ends at {end}"
        )
    first = result.first_seq or 0
    wanted = {a.seq: a for a in anchors if a.seq >= first}
    for line in _read_lines(paths):
        anchor = wanted.get(line.seq) if line.seq is not None else None
        if anchor is not None and line.entry is not None and line.entry["hash"] != anchor.hash:
            return AnchorProblem(
                anchor, "rewritten", f"seq {anchor.seq} has another hash than the one anchored"
            )
    return None


# --- CLI --------------------------------------------------------------------------------------


def _cli_parser() -> argparse.ArgumentParser:
    from autoglm.server.settings import autoglm_home

    p = argparse.ArgumentParser(prog="autoglm audit", description="the hash-chained audit log")
    sub = p.add_subparsers(dest="action", required=True)
    check = sub.add_parser("verify", help="check the chain; exit 1 at the first bad record")
    check.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="a directory (its audit.jsonl rotation set) or files, oldest first "
        "(default: $AUTOGLM_HOME/audit)",
    )
    check.add_argument("--name", default=DEFAULT_NAME, help="log file name inside a directory")
    check.add_argument(
        "--require-genesis",
        action="store_true",
        help="fail unless the chain starts at seq 1 (no file rotated away)",
    )
    check.add_argument(
        "--anchor",
        type=Path,
        help="an anchor file (`serve --audit-anchor`): also fail if the chain was truncated "
        "or rewritten after an anchored head",
    )
    check.add_argument("--chain", help="the chain to check in an anchor file holding several")
    check.set_defaults(default_dir=autoglm_home() / "audit")
    return p


def audit_cli(argv: Sequence[str]) -> int:
    """`autoglm audit verify [PATH|DIR ...]`: 0 when the chain is intact, 1 if not, 2 on usage."""
    try:
        args = _cli_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    args.paths = args.paths or [args.default_dir]
    paths: list[Path] = args.paths
    try:
        if len(paths) == 1 and paths[0].is_dir():
            paths = rotated_files(paths[0] / args.name)
            if not paths:
                raise FileNotFoundError(f"no audit log {args.name} in {args.paths[0]}")
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no such audit file: {missing[0]}")
        result = verify(paths, require_genesis=args.require_genesis)
        anchors = select_chain(read_anchors(args.anchor), args.chain) if args.anchor else []
    except (FileNotFoundError, PermissionError, IsADirectoryError, ValueError) as err:
        print(f"autoglm audit: error: {err}", file=sys.stderr)
        return 2
    _print_result(result)
    if not result.ok:
        return 1
    anchor_problem = check_anchors(paths, result, anchors)
    if anchor_problem is not None:
        print(f"FAILED against the anchor: {anchor_problem}")
        return 1
    if anchors:
        print(f"anchors: {len(anchors)} kept (newest seq {max(a.seq for a in anchors)})")
    return 0


def _print_result(result: VerifyResult) -> None:
    if result.problem is not None:
        print(f"FAILED after {result.records} good records: {result.problem}")
        return
    if result.head is None:
        print(f"OK: 0 records in {len(result.files)} file(s)")
        return
    seq, digest = result.head
    start = (
        "GENESIS"
        if result.anchored
        else f"seq {result.first_seq} (earlier records absent: rotated away or removed)"
    )
    print(
        f"OK: {result.records} records in {len(result.files)} file(s), from {start} "
        f"to seq {seq}, head {digest}"
    )
