"""A cpu fp8 fake-quant version served by the real Triton: install, select, verify, generate.

The build stage's fp8 (+ fp8 KV) PTQ of the real SmolLM2 (tests/build_engine/fake_quant_build.py,
once per session) is installed into its own repository next to an fp32 version; a separate
tritonserver (module-scoped, explicit model control, no model at start) loads what
model_versions.py selects. The served greedy tokens must be the fake-quant model's own (computed
in-process with the same runner), which here differ from the fp32 model's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.install import Installed, install
from autoglm.server.devstack.links import dev_engine_link
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.client import EngineClient, EngineRequest, EngineSampling
from autoglm.server.engine.link import EngineLink
from autoglm.server.engine.model_versions import LoadedVersion, ModelVersions
from autoglm.triton_models.cpu_engine.request import EngineRequest as RunnerRequest
from autoglm.triton_models.cpu_engine.runner import CausalLMRunner
from autoglm.triton_models.cpu_engine.sampling import SamplingConfig
from tests.build_engine.fake_quant_build import FakeQuantBuild, fp8_build

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PROMPT = "The capital of France is"
TOKENS = 24
GREEDY = EngineSampling(temperature=0.0, runtime_top_k=1, runtime_top_p=1.0, seed=1,
                        repetition_penalty=1.0)  # fmt: skip
NO_END = -1  # every generation runs its full length: the token lists compare position by position


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> FakeQuantBuild:
    return fp8_build(tmp_path_factory, model_dir)


@pytest.fixture(scope="module")
def installed(
    build: FakeQuantBuild, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Installed, Installed]:
    repo = tmp_path_factory.mktemp("fake-quant-serving") / "model_repository"
    fp32 = install(build.plan.with_(model_repo=repo, precision="fp32", kv_cache_dtype="auto"))
    fp8 = install(build.plan.with_(model_repo=repo), quality=build.quality)
    return fp32, fp8


@pytest.fixture(scope="module")
def triton(
    installed: tuple[Installed, Installed], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TritonProcess, EngineLink]]:
    link = dev_engine_link(tmp_path_factory.mktemp("fake-quant-pki"))
    repo = installed[1].model_dir.parent
    proc = TritonProcess(
        TritonOptions(model_repository=repo, models=(), exit_timeout_s=5, link=link)
    )
    proc.start()
    yield proc, link
    proc.stop()


@pytest.fixture(scope="module")
async def engine(triton: tuple[TritonProcess, EngineLink]) -> AsyncIterator[EngineClient]:
    proc, link = triton
    client = EngineClient(
        proc.grpc_target,
        credentials=link.channel_credentials(),
        metadata=link.metadata(),
        ssl_context=link.ssl_context(),
    )
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def versions(installed: tuple[Installed, Installed], engine: EngineClient) -> ModelVersions:
    return ModelVersions(installed[1].model_dir.parent, engine, hardware=mf.Hardware())


@pytest.fixture(scope="module")
def prompt_ids(model_dir: Path) -> list[int]:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(PROMPT).ids


def in_process(runner: CausalLMRunner, prompt_ids: list[int]) -> list[int]:
    request = RunnerRequest(
        input_ids=tuple(prompt_ids),
        max_new_tokens=TOKENS,
        end_id=None,
        streaming=True,
        exclude_input_in_output=True,
        sampling=SamplingConfig(top_k=1),
        stop_words=(),
    )
    return list(runner.generate(request, is_cancelled=lambda: False))


async def served(engine: EngineClient, model: str, prompt_ids: list[int]) -> list[int]:
    request = EngineRequest(model, f"fq-{time.monotonic_ns()}", prompt_ids, TOKENS, NO_END, 2,
                            GREEDY)  # fmt: skip
    out: list[int] = []
    async for ids in engine.generate(request, timeout=300):
        out.extend(ids)
    return out


async def test_fp8_fake_quant_version_is_selected_and_served(
    versions: ModelVersions,
    engine: EngineClient,
    installed: tuple[Installed, Installed],
    build: FakeQuantBuild,
    model_dir: Path,
    prompt_ids: list[int],
    triton: tuple[TritonProcess, EngineLink],
) -> None:
    fp32, fp8 = installed
    model = build.plan.model_name
    # NIM order on a CPU host: both run here, fp8 is the lower precision.
    loaded: LoadedVersion = (await versions.select_and_load())[model]
    assert loaded.version == fp8.version
    assert (loaded.manifest.profile.precision, loaded.manifest.profile.kv_cache_dtype) == (
        "fp8",
        "fp8",
    )
    got = await served(engine, model, prompt_ids)
    expected_fp8 = in_process(
        CausalLMRunner(model_dir, precision="fp8", fake_quant_dir=build.plan.fake_quant_dir),
        prompt_ids,
    )
    expected_fp32 = in_process(CausalLMRunner(model_dir), prompt_ids)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    print(
        f"fp8 served ({loaded.load_seconds:.1f} s load): {tokenizer.decode(got)!r}\n"
        f"fp32 in-process: {tokenizer.decode(expected_fp32)!r}"
    )
    assert got == expected_fp8
    assert "Paris" in tokenizer.decode(got[:3])
    assert expected_fp8 != expected_fp32  # the quantized numerics are what is served
    log = triton[0].log_path.read_text(errors="replace")
    assert f"version {fp8.version}: fp8 (ModelOpt fake-quant from " in log
    # Switching to the fp32 version serves the fp32 tokens.
    switched = await versions.switch(model, fp32.version)
    assert switched.manifest.profile.precision == "fp32"
    assert await served(engine, model, prompt_ids) == expected_fp32
