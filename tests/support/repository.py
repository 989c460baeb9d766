"""A model repository installed by the cpu-SKU installer, its own Triton, and a linked engine
client: what the version, canary and client-version integration tests each start per module."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from autoglm.build_engine.plan import BuildPlan
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.client import EngineClient
from autoglm.server.engine.link import EngineLink


def cpu_plan(base: Path, model_dir: Path, model_name: str) -> BuildPlan:
    """An fp32 cpu-SKU build of `model_dir` installing into `base/model_repository`."""
    return BuildPlan(
        model_dir=model_dir,
        sku="cpu",
        precision="fp32",
        output_dir=base / "build",
        model_repo=base / "model_repository",
        model_name=model_name,
    )


@contextlib.contextmanager
def repository_triton(repo: Path, link: EngineLink) -> Iterator[TritonProcess]:
    """A tritonserver on `repo` in explicit model control (nothing loaded at start)."""
    proc = TritonProcess(
        TritonOptions(model_repository=repo, models=(), exit_timeout_s=5, link=link)
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def linked_engine(triton: TritonProcess, link: EngineLink) -> AsyncIterator[EngineClient]:
    """The façade's engine client on `triton`, over the secured link."""
    client = EngineClient(
        triton.grpc_target,
        credentials=link.channel_credentials(),
        metadata=link.metadata(),
        ssl_context=link.ssl_context(),
    )
    try:
        yield client
    finally:
        await client.close()
