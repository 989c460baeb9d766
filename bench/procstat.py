"""CPU seconds of processes from /proc/<pid>/stat (Linux): utime + stime, own threads included.

Fields 14 and 15 of /proc/<pid>/stat (proc(5)), in clock ticks; the command name (field 2) may
hold spaces and parentheses, so fields are counted after its closing parenthesis.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:  # gone
        return None
    return text[text.rindex(")") + 2 :].split()  # fields 3.. (state, ppid, …)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads); 0.0 once it has gone."""
    f = _fields(pid)
    return (int(f[11]) + int(f[12])) / _TICKS if f else 0.0


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (e.g. Triton's python backend stub processes)."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (f := _fields(int(entry.name))):
            children.setdefault(int(f[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


class CpuMeter:
    """Snapshots CPU seconds of named process groups; `delta()` = seconds used in between."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self._end: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: tree_cpu_seconds(pids) for name, pids in self.groups.items()}
        now["machine"] = machine_busy_seconds()
        return now

    def mark(self, what: str) -> None:
        if what == "start":
            self._start = self._now()
        else:
            self._end = self._now()

    def delta(self) -> dict[str, float]:
        """CPU seconds per group in the window, plus "machine" (all processes, all cores)."""
        return {k: self._end.get(k, 0.0) - v for k, v in self._start.items()}

    def foreign(self) -> float:
        """Machine CPU seconds used by processes outside every group (other people's work)."""
        d = self.delta()
        return d.get("machine", 0.0) - sum(v for k, v in d.items() if k != "machine")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat `cpu` line, proc(5))."""
    fields = [int(v) for v in (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS
