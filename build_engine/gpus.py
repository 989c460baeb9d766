"""Local GPU detection through `nvidia-smi` (no CUDA import: this must work on CPU hosts too).

`parse_smi` is pure; `detect_gpus` runs the binary. A missing binary means "no GPU".
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# `nvidia-smi --help-query-gpu`: name, compute_cap (since driver 510) and memory.total ("MiB"
# with nounits off; we keep the unit and parse it).
SMI_ARGV: tuple[str, ...] = (
    "nvidia-smi",
    "--query-gpu=name,compute_cap,memory.total",
    "--format=csv,noheader",
)


class GpuDetectionError(RuntimeError):
    """nvidia-smi exists but its output could not be understood."""


@dataclass(frozen=True, slots=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    memory_mib: int

    @property
    def cc_string(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


Detector = Callable[[], Sequence[GpuInfo]]


def parse_smi(text: str) -> tuple[GpuInfo, ...]:
    """Parse `name, 9.0, 81559 MiB` lines (one per GPU)."""
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3:
            raise GpuDetectionError(f"unexpected nvidia-smi line: {line!r}")
        name, cc, mem = parts
        try:
            major, minor = (int(x) for x in cc.split("."))
            memory = int(mem.split()[0])
        except ValueError:
            raise GpuDetectionError(f"unexpected nvidia-smi line: {line!r}") from None
        gpus.append(GpuInfo(name, (major, minor), memory))
    return tuple(gpus)


def detect_gpus() -> tuple[GpuInfo, ...]:
    """The local GPUs; () when `nvidia-smi` is absent or finds no device."""
    if shutil.which(SMI_ARGV[0]) is None:
        return ()
    proc = subprocess.run(SMI_ARGV, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        # nvidia-smi without a driver/device exits non-zero ("couldn't communicate with the
        # NVIDIA driver"): no usable GPU.
        return ()
    return parse_smi(proc.stdout)
