"""The exec shim that starts tritonserver: the child dies with its parent, and no preexec_fn."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm.server.devstack.triton_process import launch_argv

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has already died


def test_the_command_is_run_unchanged_after_the_shim() -> None:
    argv = launch_argv(["/bin/echo", "a b", "--flag=1"])
    assert argv[0] == sys.executable and argv[-3:] == ["/bin/echo", "a b", "--flag=1"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert out.stdout == "a b --flag=1\n"


def test_launched_process_gets_sigterm_when_its_parent_dies() -> None:
    # A parent process starts `sleep 120` through the shim, reports its pid, then dies hard.
    parent = (
        "import os, subprocess, sys\n"
        "from autoglm.server.devstack.triton_process import launch_argv\n"
        "child = subprocess.Popen(launch_argv(['/bin/sleep', '120']))\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.readline()\n"
        "os._exit(9)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    child = int(proc.stdout.readline())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] != b"/bin/sleep":
        assert time.monotonic() < deadline, "the shim never exec'd the command"
        time.sleep(0.02)
    assert _alive(child)
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.02)


def test_shim_refuses_to_exec_when_its_parent_is_already_gone() -> None:
    argv = launch_argv(["/bin/echo", "never"])
    pid_at = argv.index("/bin/echo") - 1
    argv[pid_at] = "1"  # not our parent: as if the parent died before prctl
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
    assert "parent gone before exec" in out.stderr
