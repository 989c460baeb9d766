"""The engine link over a unix socket (what `autoglm dev` and `autoglm bench` run): the real
Triton with the real CPU model listening on a socket in a private directory, the secret still
required, both readers and the `autoglm serve` flags over it, and the same tokens as over the
mTLS link of the package's Triton."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tokenizers import Tokenizer
from tritonclient.grpc import service_pb2, service_pb2_grpc

from autoglm.bench.direct import GREEDY
from autoglm.client import Client, ClientConfig
from autoglm.server.devstack.links import unix_link
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.client import EngineClient, EngineRequest
from autoglm.server.engine.link import EngineLink
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.triton_models.repository import CpuEngineConfig, render_cpu_model
from tests.support.serve_process import start_serve

from .conftest import MODEL

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def link() -> EngineLink:
    return unix_link()


@pytest.fixture(scope="module")
def unix_triton(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, link: EngineLink
) -> Iterator[TritonProcess]:
    repo = tmp_path_factory.mktemp("triton-unix") / "model_repository"
    render_cpu_model(
        repo, CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir, max_concurrency=4)
    )
    proc = TritonProcess(
        TritonOptions(
            model_repository=repo, models=(MODEL,), exit_timeout_s=5, link=link, grpc_unix=True
        )
    )
    proc.start()
    socket_path = proc.grpc_socket
    try:
        yield proc
    finally:
        proc.stop()
    assert socket_path is not None and not socket_path.parent.exists(), "socket dir left behind"


@pytest.fixture(scope="module")
def prompt_ids(model_dir: Path) -> list[int]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return tokenizer.encode(PROMPT, add_special_tokens=False).ids


def test_triton_listens_on_a_socket_in_a_private_directory(unix_triton: TritonProcess) -> None:
    sock = unix_triton.grpc_socket
    assert sock is not None and stat.S_ISSOCK(sock.stat().st_mode)
    assert sock.name == "grpc:1"  # Triton appends ":<--grpc-port>" to the address
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert unix_triton.grpc_target == f"unix:{sock}"
    argv = unix_triton.command()
    assert f"--grpc-address=unix:{sock.parent / 'grpc'}" in argv
    assert not [a for a in argv if a.startswith("--grpc-use-ssl")]


def test_the_secret_is_still_required(unix_triton: TritonProcess, link: EngineLink) -> None:
    with grpc.insecure_channel(unix_triton.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # Health stays open (probes); everything else needs the header.
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5).ready
        request = service_pb2.ModelMetadataRequest(name=MODEL)
        assert stub.ModelMetadata(request, metadata=link.metadata(), timeout=5).name == MODEL
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(request, timeout=5)
        assert "restricted" in (refused.value.details() or "").lower()
        with pytest.raises(grpc.RpcError):
            stub.ModelMetadata(request, metadata=((link.metadata()[0][0], "wrong"),), timeout=5)


async def _tokens(client: EngineClient, rid: str, prompt_ids: list[int]) -> list[int]:
    request = EngineRequest(MODEL, rid, prompt_ids, 12, end_id=-1, pad_id=0, sampling=GREEDY)
    out: list[int] = []
    async with contextlib.aclosing(client.generate(request)) as stream:
        async for ids in stream:
            out.extend(ids)
    return out


def _client(target: str, link: EngineLink) -> EngineClient:
    return EngineClient(
        target,
        credentials=link.channel_credentials(),
        metadata=link.metadata(),
        ssl_context=link.ssl_context(),
    )


async def test_the_reader_over_the_socket_matches_the_tls_link(
    unix_triton: TritonProcess,
    link: EngineLink,
    triton: TritonProcess,
    engine_link: EngineLink,
    prompt_ids: list[int],
) -> None:
    got: dict[str, list[list[int]]] = {}
    for name, target, lnk in (
        ("unix", unix_triton.grpc_target, link),
        ("tls", triton.grpc_target, engine_link),
    ):
        client = _client(target, lnk)
        try:
            # Three at once: they share one connection (to the socket, or over TLS).
            got[name] = list(
                await asyncio.gather(
                    *(_tokens(client, f"{name}-{i}", prompt_ids) for i in range(3))
                )
            )
            connections = [c for e in client._readers.values() for c in e._connections]
            assert len(connections) == 1, name
        finally:
            await client.close()
    first = got["tls"][0]
    assert len(first) == 12
    assert all(run == first for runs in got.values() for run in runs), got


async def test_model_control_over_the_socket(unix_triton: TritonProcess, link: EngineLink) -> None:
    """`serve --model-repository` selects and loads models through these calls (restricted
    protocols, so the secret is sent): readiness, the repository index, an unload and a load."""
    client = _client(unix_triton.grpc_target, link)
    try:
        assert await client.model_ready(MODEL)
        index = {e.name: e.state for e in await client.repository_index()}
        assert index[MODEL] == "READY"
        await client.unload_model(MODEL)
        assert not await client.model_ready(MODEL)
        await client.load_model(MODEL)
        assert await client.model_ready(MODEL)
    finally:
        await client.close()


async def test_the_reader_names_the_socket_when_triton_is_gone(
    tmp_path: Path, link: EngineLink, prompt_ids: list[int]
) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    client = _client(f"unix:{d}/grpc:1", link)
    try:
        with pytest.raises(Exception, match=re.escape(f"{d}/grpc:1")) as failed:
            await _tokens(client, "gone", prompt_ids)
        assert type(failed.value).__name__ == "EngineUnavailable"
    finally:
        await client.close()


def test_serve_over_the_socket_with_only_the_secret(
    unix_triton: TritonProcess,
    link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    client_config: ClientConfig,
    client: Client,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    """`autoglm serve --triton unix:… --triton-secret-file F`: no link certificates needed."""
    secret_file = link.write_secret(tmp_path / "triton-secret")
    serve = start_serve(
        triton_target=unix_triton.grpc_target,
        model=MODEL,
        model_dir=model_dir,
        pki=pki,
        token_store=token_store,
        link_flags=["--triton-secret-file", str(secret_file)],
        grace_s=1,
    )
    try:
        config = dataclasses.replace(client_config, endpoint=f"127.0.0.1:{serve.port}")
        with Client(config) as c:
            over_socket = c.generate(PROMPT, max_tokens=10, temperature=0.0)
        over_tls = client.generate(PROMPT, max_tokens=10, temperature=0.0)
        assert over_socket.token_ids == over_tls.token_ids
        assert len(over_socket.token_ids) == 10 and over_socket.text == over_tls.text
    finally:
        serve.stop()


async def test_a_restarted_triton_keeps_its_socket_path(
    unix_triton: TritonProcess, link: EngineLink, prompt_ids: list[int]
) -> None:
    """stop() removes the directory; start() again makes the same path (the façade's target)."""
    target = unix_triton.grpc_target
    socket_dir = unix_triton.grpc_socket.parent  # type: ignore[union-attr]
    client = _client(target, link)
    try:
        before = await _tokens(client, "before", prompt_ids)
        # Stopped from a thread, so that this loop sees the old connection end, as a running
        # façade would; started from this (main) thread: Triton dies with the thread that
        # started it (PR_SET_PDEATHSIG, triton_process.launch_argv).
        await asyncio.to_thread(unix_triton.stop)
        assert not socket_dir.exists()
        unix_triton.start()
        assert unix_triton.grpc_target == target
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        # The same client connects again: its connection to the old Triton has ended.
        assert await _tokens(client, "after", prompt_ids) == before
    finally:
        await client.close()
