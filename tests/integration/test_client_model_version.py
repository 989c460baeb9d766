"""`Completion.model_version` / the last `Delta.model_version` through the real façade: a model
served from a model repository answers with the `x-autoglm-model-version` trailer, and both
clients return it, for Generate and GenerateStream.

Like test_model_versions.py (whose fixtures are module-scoped, so they are not shared): a
tritonserver of its own, explicit mode, over a repository installed by the cpu-SKU installer
from the real SmolLM2 folder; here two versions, so that the answer (2) is not the first one.
The stand-in tests of tests/client/test_model_version.py cover the absent and malformed cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autoglm.build_engine.install import install
from autoglm.client import AsyncClient, Client, ClientConfig
from autoglm.server.devstack.links import dev_engine_link
from autoglm.server.engine.link import EngineLink
from autoglm.server.settings import Settings
from tests.support.repository import cpu_plan, repository_triton

from .conftest import FacadeThread

pytestmark = pytest.mark.integration

MODEL = "smollm2-client-version"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    plan = cpu_plan(tmp_path_factory.mktemp("client-version"), model_dir, MODEL)
    assert plan.model_repo is not None
    assert [install(plan).version for _ in range(2)] == [1, 2]
    return plan.model_repo


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> EngineLink:
    return dev_engine_link(tmp_path_factory.mktemp("client-version-pki"))


@pytest.fixture(scope="module")
def endpoint(
    repo: Path, link: EngineLink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The façade's endpoint; it selects, verifies and loads the newest version itself."""
    with repository_triton(repo, link) as triton:
        settings = Settings(
            audit_dir=tmp_path_factory.mktemp("client-version-audit"),
            listen="127.0.0.1:0",
            triton_target=triton.grpc_target,
            models=(),
            model_repository=repo,
            engine_link=link,
            insecure_dev=True,  # security is tested elsewhere; this is about the trailer
            metrics_listen=None,
        )
        thread = FacadeThread(settings)
        try:
            versions = thread.running.versions
            assert versions is not None and versions.loaded[MODEL].version == 2
            yield f"127.0.0.1:{thread.port}"
        finally:
            thread.stop()


@pytest.fixture
def config(endpoint: str) -> ClientConfig:
    return ClientConfig(endpoint, None, None, None, None, insecure=True, model=MODEL)


def test_sync_client_returns_the_version_that_answered(config: ClientConfig) -> None:
    with Client(config) as client:
        completion = client.generate("The capital of France is", max_tokens=2)
        deltas = list(client.generate_stream("The capital of France is", max_tokens=2))
    assert completion.completion_tokens == 2 and completion.model_version == 2
    assert deltas[-1].finish_reason == "length" and deltas[-1].model_version == 2
    assert all(d.model_version is None for d in deltas[:-1])  # the last delta only


async def test_async_client_returns_the_version_that_answered(config: ClientConfig) -> None:
    async with AsyncClient(config) as client:
        completion = await client.generate("The capital of France is", max_tokens=2)
        deltas = [d async for d in client.generate_stream("The capital of France is", max_tokens=2)]
    assert completion.completion_tokens == 2 and completion.model_version == 2
    assert deltas[-1].finish_reason == "length" and deltas[-1].model_version == 2
    assert all(d.model_version is None for d in deltas[:-1])
