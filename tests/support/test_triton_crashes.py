"""CrashScanner: which Triton log lines count as the upstream crash, and only new ones."""

from __future__ import annotations

from pathlib import Path

from tests.support.triton_crashes import CrashScanner

SEGV = "Signal (11) received."
ABORT = "terminate called after throwing an instance of 'boost::interprocess::lock_exception'"


def _append(path: Path, *lines: str, newline: bool = True) -> None:
    with path.open("a") as f:
        f.write("\n".join(lines) + ("\n" if newline else ""))


def test_counts_only_signature_lines_written_since_the_last_scan(tmp_path: Path) -> None:
    log = tmp_path / "a" / "triton.log"
    log.parent.mkdir()
    _append(log, "I1130 started", SEGV)
    scanner = CrashScanner(tmp_path)
    assert [line.split(": ", 1)[1] for line in scanner.scan()] == [SEGV]
    assert scanner.scan() == []  # already seen
    _append(log, "I1130 more", ABORT, "Signal (6) received.")
    assert len(scanner.scan()) == 2


def test_other_logs_and_other_signals_are_not_crashes(tmp_path: Path) -> None:
    _append(tmp_path / "facade.log", SEGV)  # not a Triton log
    _append(tmp_path / "triton1.log", "Signal (15) received.", "E1130 model failed to load")
    assert CrashScanner(tmp_path).scan() == []


def test_a_line_being_written_is_read_when_complete(tmp_path: Path) -> None:
    log = tmp_path / "triton0.log"
    _append(log, "Signal (11) rec", newline=False)
    scanner = CrashScanner(tmp_path)
    assert scanner.scan() == []
    _append(log, "eived.")
    assert len(scanner.scan()) == 1
