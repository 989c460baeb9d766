"""Tell an upstream Triton crash from a failure of ours, by reading the Triton logs of the run.

Triton 2.51's python backend sometimes kills the whole server under concurrent streams on this
CPU setup (docs/reliability.md: SIGSEGV in libtriton_python.so, or SIGABRT after
`boost::interprocess::lock_exception`; same signature as triton-inference-server/server#8882,
reproduced without the façade). Triton prints the signal before it dies, so a crash shows in
its log. A SIGKILL from a test (engine-failure tests) prints nothing and is not counted.
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
