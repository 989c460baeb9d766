"""Run the real Triton Inference Server binary shipped in the `nvidia-pytriton` wheel.

The wheel carries tritonserver 2.51.0 (r24.10). Three things make its python backend work from
a virtualenv (facts.md, each seen to fail without it):
  1. the python backend stub for this Python version is copied into backends/python/;
  2. the venv's bin/ comes first on PATH (the stub finds its interpreter as `python3`);
  3. LD_LIBRARY_PATH holds the venv interpreter's LIBDIR so the stub links the same libpython.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from autoglm.server.engine.link import EngineLink


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready; the message carries the tail of its log."""


# In the child, before exec: get SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG), so
# no orphaned Triton outlives a crash. Done by a tiny interpreter that then execs tritonserver,
# not by Popen(preexec_fn=...): preexec_fn runs Python in the forked child of a multi-threaded
# process (gRPC's threads), and seen here it segfaulted there in another library's at-fork hook.
_PDEATHSIG_EXEC = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit('parent gone before exec')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def launch_argv(command: list[str]) -> list[str]:
    """`command` as run: through the PDEATHSIG exec shim on Linux, as is elsewhere."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), *command]


def pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_python_backend(root: Path | None = None) -> Path:
    """Install the python-backend stub for this interpreter (idempotent); returns backends dir."""
    root = root or pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    target = root / "backends" / "python" / "triton_python_backend_stub"
    if not target.is_file() or target.stat().st_size != stub.stat().st_size:
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(stub, tmp)
        tmp.chmod(0o755)
        tmp.replace(target)
    return root / "backends"


def triton_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which the python backend stub runs this venv's interpreter."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)  # not resolved: the venv's bin, not the base's
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    # No byte-code next to model.py in the (checksummed) model repository.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # The stub may run under the C locale: UTF-8 file I/O regardless (torch/ModelOpt read their
    # templates with the default encoding and failed with "'ascii' codec can't decode").
    env["PYTHONUTF8"] = "1"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free now. Triton cannot bind port 0 and report it back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


UNIX_GRPC_PORT = 1  # any number: Triton only appends it to the socket's path
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL (Linux)


_SOCKET_DIR_OWNER = re.compile(r"autoglm-triton-(\d+)-(\d+)-")


def _private_socket_dir() -> Path:
    """A fresh 0700 directory for Triton's socket (mkdtemp), short enough for sun_path, named
    after its owner (`autoglm-triton-<pid namespace>-<our pid>-…`) so that a later start can
    sweep it if we die without stopping Triton (`sweep_orphan_socket_dirs`)."""
    directory = Path(tempfile.mkdtemp(prefix=f"autoglm-triton-{_pid_namespace()}-{os.getpid()}-"))
    if len(str(directory / f"grpc:{UNIX_GRPC_PORT}").encode()) > _SUN_PATH_MAX:
        directory.rmdir()
        raise TritonStartError(
            f"the unix socket path under {directory.parent} is longer than {_SUN_PATH_MAX}"
            " bytes; set TMPDIR to a shorter directory"
        )
    return directory


def sweep_orphan_socket_dirs(tmp_dir: Path | None = None) -> int:
    """Remove the socket directories of TritonProcesses of our pid namespace and user whose
    owning process is gone; how many (the shm sweep's rule, for `grpc_unix`)."""
    removed = 0
    namespace, uid = _pid_namespace(), os.getuid()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(tmp_dir or tempfile.gettempdir()):
            owner = _SOCKET_DIR_OWNER.match(entry.name)
            if (
                owner is not None
                and int(owner.group(1)) == namespace
                and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_uid == uid
                and not _alive(int(owner.group(2)))
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


@dataclass(frozen=True, slots=True)
class TritonOptions:
    model_repository: Path
    models: tuple[str, ...]
    host: str = "127.0.0.1"
    grpc_port: int = 0  # 0 = choose a free port
    http_port: int = 0
    metrics_port: int = 0
    log_file: Path | None = None
    log_verbose: int = 0
    # A stream a client leaves open holds SIGTERM shutdown for this long (default 30 s).
    exit_timeout_s: int = 10
    startup_timeout_s: float = 180.0
    extra_args: tuple[str, ...] = field(default=())
    # mTLS or unix socket + restricted-protocol secret (engine/link.py); None = plaintext
    # loopback (tests of the engine alone only: the façade's own settings decide what it needs).
    link: EngineLink | None = None
    # gRPC on a unix socket in a private (0700) directory made at start, removed at stop,
    # instead of host:grpc_port (`grpc_target` is then `unix:/…`).
    grpc_unix: bool = False
    # OTLP/HTTP traces endpoint ("host:port/v1/traces"; Triton 2.51 exports JSON over HTTP only).
    # rate=1: in 2.51 rate=0 traced nothing at all, propagated requests included (facts.md).
    trace_url: str | None = None


# The python backend's shared-memory regions (one or more per model instance stub, 1 MiB and
# up) live in /dev/shm. Triton unlinks them when it shuts down cleanly, not when it is killed or
# crashes: 277 of them (277 MB) had piled up on this machine from test and bench runs — on a
# container's default 64 MB /dev/shm that breaks the next start. So every TritonProcess names
# its regions with a prefix of its own (the python backend's `shm-region-prefix-name` config)
# holding this process's pid, removes them once its tritonserver has exited, and a start sweeps
# away the regions of owners that are no longer alive. The pid namespace is part of the name: a
# /dev/shm shared between containers must not make another namespace's live pid look dead here.
SHM_DIR = Path("/dev/shm")
_SHM_OWNER = re.compile(r"autoglm_(\d+)_(\d+)_[0-9a-f]{8}_")


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def shm_prefix() -> str:
    """A region prefix unique to one TritonProcess:
    `autoglm_<pid namespace>_<our pid>_<8 hex>_`."""
    return f"autoglm_{_pid_namespace()}_{os.getpid()}_{secrets.token_hex(4)}_"


def remove_shm_regions(prefix: str, shm_dir: Path = SHM_DIR) -> int:
    """Unlink every region named `prefix…` (its tritonserver has exited); how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(shm_dir):
            if entry.name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def sweep_orphan_shm(shm_dir: Path = SHM_DIR) -> int:
    """Unlink the regions of TritonProcesses of our pid namespace whose owning process is gone;
    how many. Regions without our prefix (another Triton on the host) or of another pid
    namespace are never touched."""
    removed = 0
    namespace = _pid_namespace()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(shm_dir):
            owner = _SHM_OWNER.match(entry.name)
            if (
                owner is not None
                and int(owner.group(1)) == namespace
                and not _alive(int(owner.group(2)))
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# Triton opens its gRPC port only once the models given with --load-model are loaded, so every
# connection attempt before that fails. gRPC's default reconnect backoff (1 s, growing by 1.6x
# with jitter) then noticed a restarted Triton up to seconds late (seen: 5.8 s to notice a Triton
# that answered calls at 4.5 s); retrying every 100–500 ms costs nothing on loopback.
_READY_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class TritonProcess:
    """A tritonserver child process; `start()` returns once every model is ready."""

    def __init__(self, options: TritonOptions) -> None:
        self.options = options
        # A unix-socket Triton has no gRPC port (UNIX_GRPC_PORT only names its socket file).
        self.grpc_port = 0 if options.grpc_unix else options.grpc_port or free_port(options.host)
        self.http_port = options.http_port or free_port(options.host)
        self.metrics_port = options.metrics_port or free_port(options.host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._group_killed = False  # the current process group was SIGKILLed (stop/kill)
        self.ready_at: float | None = None  # time.monotonic() when it last answered ready
        self._log_path = options.log_file or options.model_repository.parent / "triton.log"
        self.shm_prefix = shm_prefix()
        self._socket_dir: Path | None = None

    @property
    def grpc_socket(self) -> Path | None:
        """The unix socket Triton listens on (`grpc_unix`, once started)."""
        if self._socket_dir is None:
            return None
        # Triton 2.51 listens on "<--grpc-address>:<--grpc-port>" whatever the address is, so
        # `--grpc-address=unix:/d/grpc --grpc-port=1` makes the socket file "/d/grpc:1" (seen
        # here: "Started GRPCInferenceService at unix:/d/grpc:1"; tests/integration/test_unix_link).
        return self._socket_dir / f"grpc:{UNIX_GRPC_PORT}"

    @property
    def grpc_target(self) -> str:
        if self.options.grpc_unix:
            if self.grpc_socket is None:
                raise RuntimeError("grpc_target: a unix-socket Triton has none before start()")
            return f"unix:{self.grpc_socket}"
        return f"{self.options.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        root = pytriton_root()
        o = self.options
        if o.grpc_unix and self._socket_dir is None:
            raise RuntimeError(
                "command: a unix-socket Triton's socket directory is made by start()"
            )
        cmd = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={o.model_repository}",
            f"--backend-directory={root / 'backends'}",
            f"--cache-directory={root / 'caches'}",
            "--model-control-mode=explicit",
            # Our configs are complete (rendered, checked with ModelConfig). Auto-complete would
            # start one more python-backend stub per load, importing torch only to be killed:
            # ~4 s per load here, and a broken model.py fails there, in a stub whose cleanup
            # delayed every later load/unload of the model by minutes in one CI run.
            "--disable-auto-complete-config",
            *[f"--load-model={m}" for m in o.models],
            *(
                (
                    f"--grpc-address=unix:{self._socket_dir / 'grpc'}",
                    f"--grpc-port={UNIX_GRPC_PORT}",
                )
                if self._socket_dir is not None
                else (f"--grpc-address={o.host}", f"--grpc-port={self.grpc_port}")
            ),
            f"--http-address={o.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={o.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={o.log_verbose}",
            *(o.link.triton_args() if o.link else ()),
            *(
                (
                    "--trace-config=mode=opentelemetry",
                    "--trace-config=rate=1",
                    "--trace-config=level=TIMESTAMPS",
                    f"--trace-config=opentelemetry,url={o.trace_url}",
                    "--trace-config=opentelemetry,resource=service.name=triton",
                )
                if o.trace_url
                else ()
            ),
            *o.extra_args,
        ]
        return cmd

    def start(self) -> None:
        """`launch`, then `wait_ready`; on failure Triton is stopped and cleaned up."""
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def launch(self) -> None:
        """Spawn tritonserver and return at once (a restart: after `stop`, on the same ports
        and socket path).

        Call it from a thread that lives as long as Triton should: the exec shim's
        PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process
        (prctl(2)), so a launch from a short-lived executor thread would SIGTERM Triton."""
        prepare_python_backend()
        remove_shm_regions(self.shm_prefix)  # of an earlier run of ours that crashed
        sweep_orphan_shm()
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.options.grpc_unix:
            if self._socket_dir is None:
                sweep_orphan_socket_dirs()
                self._socket_dir = _private_socket_dir()
            else:
                # A restart keeps the target its clients know; the directory was ours and was
                # removed at stop: made again 0700, or FileExistsError if someone took the name.
                self._socket_dir.mkdir(mode=0o700)
        try:
            with open(self._log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    launch_argv(self.command()),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=triton_env(),
                    start_new_session=True,  # our Ctrl-C is handled by us, then we stop Triton
                )
            self._group_killed = False
            self.ready_at = None
        except BaseException:
            self._remove_socket_dir()  # Triton never started
            raise

    async def exited(self) -> int:
        """Wait until tritonserver exits, reap it (no zombie) and return its return code.

        Woken by the kernel, not by polling: a pidfd (Linux ≥ 5.3, pidfd_open(2)) becomes
        readable when the process exits, and the event loop watches it like a socket. Elsewhere
        a thread blocks in waitpid instead."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("exited: Triton was never launched")
        if proc.poll() is not None:
            return proc.returncode
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # no pidfd here, or reaped meanwhile (ESRCH)
            return await asyncio.to_thread(proc.wait)
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()
        try:
            loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
            try:
                await gone
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)
        return proc.wait()  # it has exited: returns at once

    def wait_ready(self) -> None:
        """Block until Triton and every model answer ready; TritonStartError if Triton exits
        first or is not ready within `startup_timeout_s` (it is left running then)."""
        deadline = time.monotonic() + self.options.startup_timeout_s
        creds = self.options.link.channel_credentials() if self.options.link else None
        channel = (
            grpc.secure_channel(self.grpc_target, creds, _READY_CHANNEL_OPTIONS)
            if creds
            else grpc.insecure_channel(self.grpc_target, _READY_CHANNEL_OPTIONS)
        )
        with channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    raise TritonStartError(
                        f"tritonserver exited during start-up:\n{self.log_tail()}"
                    )
                with contextlib.suppress(grpc.RpcError):
                    if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1).ready and all(
                        stub.ModelReady(service_pb2.ModelReadyRequest(name=m), timeout=1).ready
                        for m in self.options.models
                    ):
                        self.ready_at = time.monotonic()
                        return
                time.sleep(0.1)
        raise TritonStartError(
            f"tritonserver not ready after {self.options.startup_timeout_s:.0f} s:\n"
            + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait (exit timeout + margin), then SIGKILL. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout if timeout is not None else self.options.exit_timeout_s + 5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # A tritonserver that crashed leaves its python-backend stubs running (seen here after
        # SIGSEGV/SIGABRT: orphans of ~0.2–1 GB each); they share its process group. Once only:
        # after the group is gone its id may be reused by someone else's process group.
        if not self._group_killed:
            self._group_killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        remove_shm_regions(self.shm_prefix)
        self._remove_socket_dir()
        return proc.returncode

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the whole process group (tests of engine failure)."""
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._group_killed = True
            self._proc.wait()
            remove_shm_regions(self.shm_prefix)
            self._remove_socket_dir()

    def __enter__(self) -> TritonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
