"""Start what is measured: Triton (engine link: its unix socket, or mTLS on a free loopback
port; + secret) hosting the synthetic engine (and optionally the real CPU model, or the tiny
GLM-4.1V on the CPU engine of the vLLM contract for the image scenario), and the façade
as a subprocess (`autoglm serve`: mTLS + bearer tokens + tracing to a local OTLP sink), so that
its CPU time is its own process's. Patterns from tests/integration/conftest.py."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.bench.facade import facade_credentials
from autoglm.bench.openai_sse import client_context
from autoglm.bench.procstat import descendants
from autoglm.bench.sink import OtlpSink
from autoglm.bench.workload import token_cycle
from autoglm.server.devstack.links import dev_engine_link, unix_link
from autoglm.server.devstack.pki import DevPki, ensure_dev_pki
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec, load_model
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.limits import PrincipalLimits
from autoglm.server.telemetry.span_export import DEFAULT_SPAN_EXPORT
from autoglm.triton_models.repository import (
    CpuEngineConfig,
    CpuVlConfig,
    render_cpu_model,
    render_cpu_vl_model,
)
from autoglm.triton_models.synthetic import render_synthetic_model

_LISTENING = re.compile(r"listening on port (\d+)")
_WORKERS_LISTENING = re.compile(r"\d+ workers listening on port (\d+)")  # workers.py
_RELAY_LISTENING = re.compile(r"bare relay listening on port (\d+)")  # bare_relay.py
_HOP_LISTENING = re.compile(r"byte hop listening on (\S+)")  # byte_hop.py
# `autoglm serve --openai-listen HOST:0` logs the port it bound (api/openai/http_server.py:
# "OpenAI-compatible API on https://HOST:PORT/v1"; with --workers N the port the workers share);
# in the JSON log that is the message field's text.
_OPENAI_LISTENING = re.compile(
    r"(?:OpenAI-compatible API on|openai front door listening on) https://[^\s\"/]+:(\d+)"
)
_UNLIMITED = 1_000_000  # admission limits far above any benchmark load


@dataclass(frozen=True, slots=True)
class EngineModel:
    """One Triton model the bench serves; public name = Triton name."""

    name: str
    tokens_per_second: float | None  # None = a real CPU model (SmolLM2, or vl_dir's)
    # A vision-language model's HF folder (the tiny GLM-4.1V): served by the CPU engine of the
    # vLLM contract (triton_models/cpu_vl), spoken to in text by the façade (engine
    # cpu_reference_vl); None = a token-id engine.
    vl_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class StackOptions:
    workdir: Path
    tokenizer_dir: Path  # the SmolLM2 HF folder: tokenizer for both, weights for the real model
    models: tuple[EngineModel, ...]
    token_ids: Sequence[int]  # the synthetic engine's id cycle
    cpu_instances: int = 1
    cpu_max_concurrency: int = 8
    facade_workers: int = 1  # `autoglm serve --workers`: processes sharing the port
    span_export: str = DEFAULT_SPAN_EXPORT  # `autoglm serve --span-export`
    engine_link: str = "unix"  # "unix": Triton's gRPC on a unix socket; "tls": mTLS over TCP
    # The floors (`autoglm bench --floor`): also start bare_relay.py (the floor under any
    # grpc.aio façade) and byte_hop.py (the floor under any Python process on the way).
    floors: bool = False
    # The façade also serves its OpenAI-compatible front door (`serve --openai-listen`), TLS
    # with the same server certificate, bearer tokens from the same store.
    openai: bool = False
    # The LoRA adapter registry the façade serves (`serve --adapters`; the lora scenario).
    adapters_dir: Path | None = None


class BenchStack:
    """`with BenchStack(opts) as s:` → s.triton, s.facade_endpoint, s.facade_pid, s.link…"""

    def __init__(self, opts: StackOptions) -> None:
        self.opts = opts
        work = opts.workdir
        work.mkdir(parents=True, exist_ok=True)
        if opts.engine_link not in ("unix", "tls"):
            raise ValueError(f"engine_link: {opts.engine_link!r} is not unix or tls")
        if opts.floors and opts.engine_link != "unix":
            raise ValueError("floors: the floors reach Triton by its unix socket only")
        self.link: EngineLink = (
            unix_link() if opts.engine_link == "unix" else dev_engine_link(work / "pki-engine")
        )
        self.pki: DevPki = ensure_dev_pki(work / "pki")
        store = TokenStore(work / "tokens.json")
        limits = PrincipalLimits(_UNLIMITED, _UNLIMITED, _UNLIMITED)
        self.token, _ = store.create("bench", ["generate", "models:read"], limits=limits)
        self._store = store
        self.sink = OtlpSink()
        self.triton: TritonProcess | None = None
        self._facade: subprocess.Popen[bytes] | None = None
        self.facade_port = 0
        self.openai_port = 0
        self._relay: subprocess.Popen[bytes] | None = None
        self.relay_port = 0
        self._hop: subprocess.Popen[bytes] | None = None
        self.hop_target: str | None = None  # unix:/… of byte_hop.py, with floors
        self.facade_log = work / "facade.log"

    # ---- Triton ------------------------------------------------------------------------------
    def _render(self, repo: Path) -> None:
        for m in self.opts.models:
            if m.vl_dir is not None:
                render_cpu_vl_model(
                    repo,
                    CpuVlConfig(
                        model_name=m.name,
                        hf_model_dir=m.vl_dir,
                        instance_count=self.opts.cpu_instances,
                        max_concurrency=self.opts.cpu_max_concurrency,
                    ),
                )
            elif m.tokens_per_second is None:
                render_cpu_model(
                    repo,
                    CpuEngineConfig(
                        model_name=m.name,
                        hf_model_dir=self.opts.tokenizer_dir,
                        instance_count=self.opts.cpu_instances,
                        max_concurrency=self.opts.cpu_max_concurrency,
                    ),
                )
            else:
                render_synthetic_model(
                    repo, m.name, m.tokens_per_second, token_ids=self.opts.token_ids
                )

    def _start_triton(self) -> None:
        repo = self.opts.workdir / "model_repository"
        self._render(repo)
        self.triton = TritonProcess(
            TritonOptions(
                model_repository=repo,
                models=tuple(m.name for m in self.opts.models),
                exit_timeout_s=5,
                link=self.link,
                grpc_unix=self.link.tls is None,
                log_file=self.opts.workdir / "triton.log",
            )
        )
        self.triton.start()

    # ---- façade ------------------------------------------------------------------------------
    def _secret_file(self) -> Path:
        return self.link.write_secret(self.opts.workdir / "triton-secret")

    def facade_command(self) -> list[str]:
        assert self.triton is not None
        secret = self._secret_file()
        cmd = [
            sys.executable,
            "-m",
            "autoglm.server.cli",
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--triton",
            self.triton.grpc_target,
            "--tls-cert",
            str(self.pki.server_cert),
            "--tls-key",
            str(self.pki.server_key),
            "--client-ca",
            str(self.pki.ca_cert),
            "--token-store",
            str(self._store.path),
            *(
                (
                    "--triton-ca",
                    str(tls.ca_cert),
                    "--triton-cert",
                    str(tls.client_cert),
                    "--triton-key",
                    str(tls.client_key),
                )
                if (tls := self.link.tls) is not None
                else ()
            ),
            "--triton-secret-file",
            str(secret),
            "--metrics-listen",
            "127.0.0.1:0",
            "--max-in-flight",
            str(_UNLIMITED),
            "--max-streams-per-principal",
            str(_UNLIMITED),
            "--requests-per-minute",
            str(_UNLIMITED),
            "--grace",
            "1",
            "--workers",
            str(self.opts.facade_workers),
            "--span-export",
            self.opts.span_export,
        ]
        if self.opts.openai:
            cmd += ["--openai-listen", "127.0.0.1:0"]
        if self.opts.adapters_dir is not None:
            cmd += ["--adapters", str(self.opts.adapters_dir)]
        for m in self.opts.models:
            if m.vl_dir is not None:
                cmd += ["--model", f"{m.name}={m.name}:{m.vl_dir},engine=cpu_reference_vl"]
            else:
                cmd += ["--model", f"{m.name}={m.name}:{self.opts.tokenizer_dir}"]
        return cmd

    def _start_facade(self, timeout_s: float = 60.0) -> None:
        env = dict(os.environ)
        # Tracing on, exporting over OTLP/gRPC to the in-harness sink (with --span-export child,
        # from the façade's span exporter child process, span_offload.py: a descendant, so its
        # CPU is the façade's; with batch, from the façade's own process).
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=self.sink.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_INSECURE="true",
            OTEL_SERVICE_NAME="autoglm-facade-bench",
        )
        with open(self.facade_log, "wb") as log:
            self._facade = subprocess.Popen(
                self.facade_command(), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout_s
        while not self.facade_port:
            if self._facade.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"façade did not start:\n{self.facade_log.read_text()[-3000:]}")
            pattern = _WORKERS_LISTENING if self.opts.facade_workers > 1 else _LISTENING
            if m := pattern.search(self.facade_log.read_text(errors="replace")):
                self.facade_port = int(m.group(1))
            else:
                time.sleep(0.05)
        self._wait_serving(deadline)
        if self.opts.openai:
            self._wait_openai(deadline)

    def _wait_openai(self, deadline: float) -> None:
        """The front door's port from the façade's log, then `GET /v1/models` answered 200 with
        the bench's token (what an OpenAI client checks first, issue #21)."""
        while not self.openai_port:
            if self._facade is None or self._facade.poll() is not None:
                raise RuntimeError(f"façade stopped:\n{self.facade_log.read_text()[-3000:]}")
            if m := _OPENAI_LISTENING.search(self.facade_log.read_text(errors="replace")):
                self.openai_port = int(m.group(1))
            elif time.monotonic() > deadline:
                raise RuntimeError(
                    "the façade never logged `OpenAI-compatible API on https://HOST:PORT/v1`"
                )
            else:
                time.sleep(0.05)
        ctx = client_context(self.pki)
        last = ""
        while time.monotonic() < deadline:
            conn = http.client.HTTPSConnection("127.0.0.1", self.openai_port, context=ctx)
            conn.timeout = 2
            try:
                auth = {"Authorization": f"Bearer {self.token}"}
                conn.request("GET", "/v1/models", headers=auth)
                resp = conn.getresponse()
                last = f"{resp.status} {resp.read()[:300]!r}"
                if resp.status == 200:
                    return
            except OSError as exc:
                last = repr(exc)
            finally:
                conn.close()
            time.sleep(0.1)
        raise RuntimeError(f"the OpenAI front door never answered GET /v1/models: {last}")

    # ---- the bare relay (benchmark tool: the floor under any grpc.aio façade) -----------------
    def relay_command(self) -> list[str]:
        assert self.triton is not None
        cmd = [
            sys.executable,
            "-m",
            "autoglm.bench.bare_relay",
            "--triton",
            self.triton.grpc_target,
            "--triton-secret-file",
            str(self._secret_file()),
            "--tls",
            str(self.pki.server_cert),
            str(self.pki.server_key),
            str(self.pki.ca_cert),
        ]
        for m in self.opts.models:
            if m.vl_dir is None:  # the relay speaks the token-id contract only
                cmd += ["--model", f"{m.name}={m.name}:{self.opts.tokenizer_dir}"]
        return cmd

    def _start_relay(self) -> None:
        self._relay, port = _spawn(
            self.relay_command(), self.opts.workdir / "bare-relay.log", _RELAY_LISTENING
        )
        self.relay_port = int(port)

    # ---- the byte hop (benchmark tool: the floor under any Python process on the way) -------
    def _start_hop(self) -> None:
        assert self.triton is not None
        cmd = [
            sys.executable,
            "-m",
            "autoglm.bench.byte_hop",
            "--listen",
            str(self.opts.workdir / "byte-hop.sock"),
            "--triton",
            self.triton.grpc_target,
        ]
        self._hop, path = _spawn(cmd, self.opts.workdir / "byte-hop.log", _HOP_LISTENING)
        self.hop_target = f"unix:{path}"

    def hop_pids(self) -> list[int]:
        return [self._hop.pid] if self._hop is not None else []

    @property
    def relay_endpoint(self) -> str | None:
        return f"127.0.0.1:{self.relay_port}" if self.relay_port else None

    def relay_pids(self) -> list[int]:
        return [self._relay.pid] if self._relay is not None else []

    def _wait_serving(self, deadline: float) -> None:
        creds = facade_credentials(self.pki)  # health needs no token
        with grpc.secure_channel(self.facade_endpoint, creds) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.RpcError):
                    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.1)
        raise RuntimeError("façade never reported SERVING")

    @property
    def facade_endpoint(self) -> str:
        return f"127.0.0.1:{self.facade_port}"

    @property
    def openai_endpoint(self) -> str | None:
        """HOST:PORT of the façade's OpenAI front door (with StackOptions.openai)."""
        return f"127.0.0.1:{self.openai_port}" if self.openai_port else None

    @property
    def facade_pid(self) -> int:
        """The `autoglm serve` process (with --workers > 1: the supervisor of the workers)."""
        assert self._facade is not None
        return self._facade.pid

    def facade_pids(self) -> list[int]:
        """Every façade process: `autoglm serve` and its workers (and multiprocessing's helper)."""
        return [self.facade_pid, *descendants(self.facade_pid)]

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> BenchStack:
        self.sink.__enter__()
        try:
            self._start_triton()
            self._start_facade()
            if self.opts.floors:
                self._start_relay()
                self._start_hop()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self._hop, self._relay, self._facade):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.triton is not None:
            self.triton.stop()
        self.sink.__exit__()


def _spawn(
    cmd: list[str], log_path: Path, ready: re.Pattern[str], timeout_s: float = 60.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a bench tool's process; wait for its `ready` line in its log (its first group)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while True:
        if m := ready.search(log_path.read_text(errors="replace")):
            return proc, m.group(1)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd[2]} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def synthetic_stack(
    workdir: Path,
    tokenizer_dir: Path,
    model: str,
    *,
    prompt_len: int = 128,
    tokens_per_second: float = 0.0,
    engine_link: str = "unix",
) -> Iterator[tuple[BenchStack, list[int]]]:
    """A BenchStack serving one synthetic engine `model` (unpaced by default), and a
    `prompt_len`-id prompt taken from its token cycle: the set-up of the measurement scripts
    under scripts/."""
    served = load_model(ModelSpec(name=model, triton_model=model, tokenizer_dir=tokenizer_dir))
    tok = served.encoder.tokenizer
    cycle = token_cycle(lambda s: tok.encode(s, add_special_tokens=False).ids)
    prompt = (cycle * (prompt_len // len(cycle) + 1))[:prompt_len]
    models = (EngineModel(model, tokens_per_second),)
    with BenchStack(
        StackOptions(workdir, tokenizer_dir, models, cycle, engine_link=engine_link)
    ) as s:
        yield s, prompt
