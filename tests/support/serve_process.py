"""`autoglm serve` as a subprocess for integration tests: started with the common flags, its
port read from its log, its log kept."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from autoglm.server.devstack.pki import DevPki
from autoglm.server.security.bearer_tokens import TokenStore


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    port: int
    log: list[str] = field(default_factory=list)  # stderr lines after the port's, as they come

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_serve(
    *,
    triton_target: str,
    model: str,
    model_dir: Path,
    pki: DevPki,
    token_store: TokenStore,
    link_flags: list[str],
    grace_s: float,
) -> ServeProcess:
    """Start `autoglm serve` on a free port (mTLS + the token store) in front of `triton_target`
    with `link_flags` (--triton-ca …/--triton-secret-file); returns once it listens."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "autoglm.server.cli", "serve",
            "--listen", "127.0.0.1:0",
            "--triton", triton_target,
            "--model", f"{model}={model}:{model_dir}",
            "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--client-ca", str(pki.ca_cert), "--token-store", str(token_store.path),
            *link_flags,
            "--grace", str(grace_s),
            "--metrics-listen", "127.0.0.1:0",  # not the default fixed port
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    port = None
    for line in proc.stderr:
        if m := re.search(r"listening on port (\d+)", line):
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        proc.wait()
        raise AssertionError("the façade did not report its port")
    running = ServeProcess(proc, port)
    stderr = proc.stderr
    threading.Thread(target=lambda: running.log.extend(stderr), daemon=True).start()
    return running
