"""The python backend's shared-memory regions: a TritonProcess's own prefix, removed when its
tritonserver has exited; regions of owners that died are swept at the next start. (The real
backend honouring the prefix: tests/integration/test_reliability.py.) Likewise the private
directories of unix-socket Tritons (`grpc_unix`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from autoglm.server.devstack import triton_process as tp


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


NS = tp._pid_namespace()


def test_prefix_names_this_process_and_is_unique() -> None:
    a, b = tp.shm_prefix(), tp.shm_prefix()
    assert a != b
    assert a.startswith(f"autoglm_{NS}_{os.getpid()}_") and a.endswith("_")
    assert tp._SHM_OWNER.match(a + "0f3c-uuid")


def test_remove_takes_only_the_prefix(tmp_path: Path) -> None:
    mine, other = tp.shm_prefix(), tp.shm_prefix()
    for name in (f"{mine}a", f"{mine}b", f"{other}a", "triton_python_backend_shm_region_x"):
        (tmp_path / name).write_bytes(b"x")
    assert tp.remove_shm_regions(mine, tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{other}a", "triton_python_backend_shm_region_x"]
    )
    assert tp.remove_shm_regions(mine, tmp_path / "missing") == 0


def test_sweep_removes_regions_of_dead_owners_only(tmp_path: Path) -> None:
    gone = _dead_pid()
    dead = f"autoglm_{NS}_{gone}_0123abcd_"
    alive = tp.shm_prefix()
    init = f"autoglm_{NS}_1_89abcdef_"  # pid 1 exists (someone else's, or ours in a container)
    elsewhere = f"autoglm_{NS + 1}_{gone}_0123abcd_"  # another pid namespace: cannot judge
    keep = [
        f"{alive}r1",
        f"{init}r1",
        f"{elsewhere}r1",
        "triton_python_backend_shm_region_y",
        "autoglm_x_r",
    ]
    for name in [f"{dead}r1", f"{dead}r2", *keep]:
        (tmp_path / name).write_bytes(b"x")
    assert tp.sweep_orphan_shm(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_the_command_sets_the_prefix(tmp_path: Path) -> None:
    proc = tp.TritonProcess(tp.TritonOptions(model_repository=tmp_path, models=()))
    assert f"--backend-config=python,shm-region-prefix-name={proc.shm_prefix}" in proc.command()


def test_sweep_removes_socket_dirs_of_dead_owners_only(tmp_path: Path) -> None:
    gone = _dead_pid()
    dead = tmp_path / f"autoglm-triton-{NS}-{gone}-abc123"
    keep = [
        tmp_path / f"autoglm-triton-{NS}-{os.getpid()}-def456",  # ours, alive
        tmp_path / f"autoglm-triton-{NS + 1}-{gone}-abc123",  # another pid namespace
        tmp_path / "autoglm-triton-x",
        tmp_path / "pytest-of-root",
    ]
    for d in (dead, *keep):
        d.mkdir()
    (dead / "grpc:1").write_bytes(b"")  # stands for the socket file left behind
    (tmp_path / f"autoglm-triton-{NS}-{gone}-file").write_bytes(b"not a directory")
    assert tp.sweep_orphan_socket_dirs(tmp_path) == 1
    assert not dead.exists() and all(d.exists() for d in keep)
    assert tp.sweep_orphan_socket_dirs(tmp_path / "missing") == 0


def test_socket_dir_is_private_and_names_its_owner() -> None:
    d = tp._private_socket_dir()
    try:
        assert d.name.startswith(f"autoglm-triton-{NS}-{os.getpid()}-")
        assert tp._SOCKET_DIR_OWNER.match(d.name)
        assert (d.stat().st_mode & 0o777) == 0o700
    finally:
        d.rmdir()
