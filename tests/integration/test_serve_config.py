"""`autoglm serve --config FILE` with every setting only in the file: the real façade in front of
the package's Triton (mTLS link + secret), the real client, and a limit from the file enforced."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from autoglm.client import Client, ClientConfig, ResourceExhaustedError
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings_sources import toml_value
from tests.support.serve_process import ServeProcess

from .conftest import MODEL

pytestmark = pytest.mark.integration


def _start(argv: list[str]) -> ServeProcess:
    """`autoglm serve` with `argv` only (no AUTOGLM_* setting of the caller's); returns once it
    listens."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_") or k == "AUTOGLM_HOME"
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoglm.server.cli", "serve", *argv],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if m := re.search(r"listening on port (\d+)", line):
            running = ServeProcess(proc, int(m.group(1)))
            threading.Thread(target=running.log.extend, args=(proc.stderr,), daemon=True).start()
            return running
    proc.wait()
    raise AssertionError(f"the façade did not report its port (exit {proc.returncode}): {seen}")


def test_serve_with_settings_only_in_the_file(
    triton: TritonProcess,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    client_config: ClientConfig,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    tls = engine_link.tls
    assert tls is not None
    settings = {
        "listen": "127.0.0.1:0",
        "triton": triton.grpc_target,
        "model": [f"{MODEL}={MODEL}:{model_dir}"],
        "tls_cert": pki.server_cert,
        "tls_key": pki.server_key,
        "client_ca": pki.ca_cert,
        "token_store": token_store.path,
        "triton_ca": tls.ca_cert,
        "triton_cert": tls.client_cert,
        "triton_key": tls.client_key,
        "triton_secret_file": engine_link.write_secret(tmp_path / "triton-secret"),
        "metrics_listen": "127.0.0.1:0",
        "max_tokens_per_request": 8,  # seen below: the file's value reaches the running server
        "grace": 1,
    }
    config = tmp_path / "serve.toml"
    config.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    serve = _start(["--config", str(config)])
    try:
        with Client(dataclasses.replace(client_config, endpoint=f"127.0.0.1:{serve.port}")) as c:
            reply = c.generate("The capital of France is", max_tokens=8, temperature=0.0)
            assert len(reply.token_ids) == 8
            with pytest.raises(ResourceExhaustedError, match="limit of 8 tokens per request"):
                c.generate("The capital of France is", max_tokens=9)
    finally:
        serve.stop()
    assert serve.proc.returncode == 0, "".join(serve.log)
