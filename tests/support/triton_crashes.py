"""Which Triton of a test run crashed, read from its log (the integration suite attaches the lines
to the failing test's report).

tritonserver prints the fatal signal before it dies (`Signal (11) received.`, or `Signal (6)`
after `boost::interprocess::lock_exception` in the python backend); a SIGKILL from a test
(engine-failure tests) prints nothing and is not counted. Such crashes once came from
our CPU engine updating custom metrics from two threads at once (docs/reliability.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SIGNATURE = re.compile(r"Signal \((?:11|6)\) received|boost::interprocess::lock_exception")


@dataclass
class CrashScanner:
    """Counts crash signatures appended to `triton*.log` files under `root` since the last scan."""

    root: Path
    _offsets: dict[Path, int] = field(default_factory=dict)

    def scan(self) -> list[str]:
        """'log path: line' for every signature line written since the previous scan."""
        found: list[str] = []
        for log in sorted(self.root.rglob("triton*.log")):
            start = self._offsets.get(log, 0)
            try:
                with log.open("rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except OSError:
                continue
            # Only whole lines: a line still being written is read at the next scan.
            end = chunk.rfind(b"\n") + 1
            self._offsets[log] = start + end
            for line in chunk[:end].decode("utf-8", "replace").splitlines():
                if SIGNATURE.search(line):
                    found.append(f"{log}: {line.strip()}")
        return found
