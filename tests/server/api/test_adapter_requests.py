"""LoRA adapters on both front doors: GenerateRequest.adapter, and the OpenAI `model` names.

The real servicer in a real grpc.aio server (plaintext on loopback, no auth interceptor: the
anonymous principal) with a stand-in engine; the token restrictions on Generations directly,
with principals as the auth layer makes them. The real engine: tests/integration/.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from autoglm.build_engine import manifest as mf
from autoglm.server.adapters import (
    AdapterError,
    AdapterSet,
    ServedAdapter,
    check_arrays,
    engine_refusal,
    unservable,
)
from autoglm.server.api.calls import Call, Generations
from autoglm.server.api.openai import model_names, protocol
from autoglm.server.api.service import TextGenerationService
from autoglm.server.api.validation import validate_generate
from autoglm.server.engine.canary import Route
from autoglm.server.engine.client import EngineRequest
from autoglm.server.engine.lora import LoraTasks
from autoglm.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    status_for,
)
from autoglm.server.generation.relay import Push
from autoglm.server.models import ModelRegistry, ModelSpec, load_model
from autoglm.server.security.auth import Principal
from autoglm.server.security.limits import Admission, LimitSettings
from autoglm.server.telemetry.metrics import FacadeMetrics
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc


def write_adapter(root: Path, name: str, base: str, task_id: int) -> ServedAdapter:
    """Arrays as hf_lora_convert.py saves them (a batch of one), with their sha256."""
    folder = root / name
    folder.mkdir(parents=True)
    weights = folder / "model.lora_weights.npy"
    config = folder / "model.lora_config.npy"
    np.save(weights, np.full((1, 2, 6), task_id, dtype=np.float16))
    np.save(config, np.array([[[1, 0, 2], [3, 0, 2]]], dtype=np.int32))
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (weights, config)}
    return ServedAdapter(name, base, task_id, weights, config, digests)


def principal(models: set[str] = set(), adapters: set[str] = set()) -> Principal:  # noqa: B006
    return Principal(
        "t", "tenant", frozenset({"generate"}), frozenset(models), adapters=frozenset(adapters)
    )


class Engine:
    def __init__(self) -> None:
        self.requests: list[EngineRequest] = []
        self.lora_tasks = LoraTasks()

    async def stream_into(
        self,
        request: EngineRequest,
        on_ids: Push,
        *,
        timeout: float | None = None,
        on_log_probs: Push | None = None,
    ) -> None:
        self.requests.append(request)
        on_ids([42])


@pytest.fixture(scope="module")
def models(model_dir: Path) -> list:  # type: ignore[type-arg]
    return [
        load_model(ModelSpec(name=name, triton_model=name, tokenizer_dir=model_dir))
        for name in ("m", "other")
    ]


@pytest.fixture
def registry(models: list, tmp_path: Path) -> ModelRegistry:  # type: ignore[type-arg]
    adapters = AdapterSet(
        [
            write_adapter(tmp_path, "a", "m", 11),
            write_adapter(tmp_path, "b", "m", 12),
            write_adapter(tmp_path, "x", "other", 13),
        ]
    )
    return ModelRegistry(models, adapters)


@pytest.fixture
def generations(registry: ModelRegistry) -> Generations:
    return Generations(
        registry,
        Engine(),  # type: ignore[arg-type]
        metrics=FacadeMetrics(registry.names(), process_metrics=False),
        admission=Admission(LimitSettings()),
    )


@pytest.fixture
async def stub(generations: Generations) -> AsyncIterator[pb_grpc.TextGenerationStub]:
    server = grpc.aio.server()
    pb_grpc.add_TextGenerationServicer_to_server(TextGenerationService(generations), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.TextGenerationStub(channel)
    finally:
        await server.stop(None)
        generations.close()


def fields_of(exc: grpc.aio.AioRpcError) -> list[str]:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return [v.field for v in bad.field_violations]
    return []


# ---- the registry ----------------------------------------------------------------------------


def test_arrays_are_read_without_their_batch_dim_and_checked(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path, "a", "m", 11)
    check_arrays(adapter)
    weights, config = adapter.arrays()
    assert weights.shape == (2, 6) and weights.dtype == np.float16
    assert config.shape == (2, 3) and config.dtype == np.int32


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path, "a", "m", 11)
    np.save(adapter.weights_file, np.zeros((1, 2, 6), dtype=np.float16))
    with pytest.raises(AdapterError, match="not the registered file"):
        adapter.arrays()


def test_arrays_of_another_layout_are_refused(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path, "a", "m", 11)
    np.save(adapter.config_file, np.zeros((2, 2), dtype=np.int32))
    unchecked = ServedAdapter("a", "m", 11, adapter.weights_file, adapter.config_file)
    with pytest.raises(AdapterError, match=r"\[n, 3\] int32"):
        check_arrays(unchecked)


def test_names_and_task_ids_are_unique(tmp_path: Path) -> None:
    a = write_adapter(tmp_path, "a", "m", 11)
    with pytest.raises(AdapterError, match="task id 11"):
        AdapterSet([a, ServedAdapter("b", "m", 11, a.weights_file, a.config_file)])
    with pytest.raises(AdapterError, match="registered twice"):
        AdapterSet([a, a])


def test_an_adapter_of_a_model_not_served_is_refused(models: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    with pytest.raises(AdapterError, match="'gone' is not a served model"):
        ModelRegistry(models, AdapterSet([write_adapter(tmp_path, "a", "gone", 11)]))


# ---- gRPC ------------------------------------------------------------------------------------


async def test_list_models_lists_each_models_adapters(stub: pb_grpc.TextGenerationStub) -> None:
    listed = {
        m.name: list(m.adapters) for m in (await stub.ListModels(pb.ListModelsRequest())).models
    }
    assert listed == {"m": ["a", "b"], "other": ["x"]}


async def test_an_adapter_request_carries_its_task(
    stub: pb_grpc.TextGenerationStub, generations: Generations
) -> None:
    await stub.Generate(pb.GenerateRequest(model="m", prompt="hi", adapter="a"), timeout=10)
    await stub.Generate(pb.GenerateRequest(model="m", prompt="hi", adapter="a"), timeout=10)
    await stub.Generate(pb.GenerateRequest(model="m", prompt="hi"), timeout=10)
    first, second, base = generations.engine.requests  # type: ignore[attr-defined]
    assert first.lora is not None and first.lora.task_id == 11 and first.lora.carries_weights
    assert np.array_equal(first.lora.weights, np.full((2, 6), 11, dtype=np.float16))
    assert second.lora is not None and not second.lora.carries_weights
    assert base.lora is None


async def test_an_unknown_adapter_is_not_found(stub: pb_grpc.TextGenerationStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(pb.GenerateRequest(model="m", prompt="hi", adapter="zz"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (err.value.details() or "").startswith("adapter: no adapter named 'zz'")


async def test_an_adapter_of_another_base_is_invalid(stub: pb_grpc.TextGenerationStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(pb.GenerateRequest(model="m", prompt="hi", adapter="x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(err.value) == ["adapter"]


def test_an_overlong_adapter_name_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_generate(pb.GenerateRequest(model="m", prompt="hi", adapter="a" * 300))
    assert [f for f, _ in err.value.violations] == ["adapter"]


# ---- tokens restricted to adapters -----------------------------------------------------------


def test_a_token_reaches_its_own_adapters_only(generations: Generations) -> None:
    m = generations.registry.get("m")
    assert m is not None
    tenant = principal(adapters={"a"})
    assert generations.adapter("a", m, tenant) is not None
    assert generations.adapter("", m, tenant) is None  # the base model stays reachable
    # Another tenant's adapter and one that does not exist: the same refusal, before existence.
    for name in ("b", "zz"):
        with pytest.raises(PermissionDenied) as err:
            generations.adapter(name, m, tenant)
        assert err.value.field == "adapter"
    assert [a.name for a in generations.visible_adapters("m", tenant)] == ["a"]
    with pytest.raises(NotFound):
        generations.adapter("zz", m, principal())  # unrestricted: unknown is NOT_FOUND


# ---- the OpenAI door's names -----------------------------------------------------------------


def test_openai_model_names(registry: ModelRegistry) -> None:
    assert model_names.resolve("m", registry, None) == ("m", "")
    assert model_names.resolve("m:a", registry, None) == ("m", "a")
    assert model_names.resolve("a", registry, None) == ("m", "a")  # the adapter's own name
    assert model_names.resolve("x", registry, None) == ("other", "x")
    assert model_names.resolve("nothing", registry, None) == ("nothing", "")  # NOT_FOUND later
    assert model_names.metrics_model("m:a", registry) == "m"
    assert model_names.metrics_model("a", registry) == "m"


def test_openai_names_cannot_probe_other_tenants_adapters(registry: ModelRegistry) -> None:
    tenant = principal(adapters={"a"})
    assert model_names.resolve("a", registry, tenant) == ("m", "a")
    for name in ("b", "nothing"):  # exists or not: the same answer
        with pytest.raises(PermissionDenied) as err:
            model_names.resolve(name, registry, tenant)
        assert err.value.field == "model"


def test_openai_errors_about_the_adapter_name_model() -> None:
    assert protocol.param_name("adapter", prompt_field="messages") == "model"


# ---- the version that answers must be able to apply the adapter -----------------------------


def engine_profile(kind: str, rank: int = 0, modules: tuple[str, ...] = ()) -> mf.Profile:
    """A manifest profile: a TensorRT-LLM engine's (built with LoRA of `rank` on `modules`, or
    without) or the CPU engine's."""
    return mf.Profile(
        model="SmolLM2-135M-Instruct", sku="h100-sxm" if kind == "tensorrt_llm" else "cpu",
        compute_capability="9.0" if kind == "tensorrt_llm" else "cpu", precision="fp16",
        kv_cache_dtype="auto", tp=1, pp=1, max_batch=8, max_input_len=1024, max_seq_len=2048,
        max_num_tokens=4096, profile="latency", max_lora_rank=rank, lora_target_modules=modules,
    )  # fmt: skip


def test_engine_refusal_holds_an_adapter_to_the_engines_build(tmp_path: Path) -> None:
    adapter = dataclasses.replace(
        write_adapter(tmp_path, "a", "m", 11), rank=8, target_modules=("q_proj", "v_proj")
    )
    assert engine_refusal(adapter, 3, engine_profile("cpu_reference")) is None
    lora = engine_profile("tensorrt_llm", 16, ("attn_q", "attn_v"))
    assert lora.engine_kind == "tensorrt_llm" and engine_refusal(adapter, 3, lora) is None
    assert engine_refusal(adapter, 3, engine_profile("tensorrt_llm")) == (
        "adapter a: max_lora_rank: m version 3 (a TensorRT-LLM engine) was built without LoRA"
        " (max_lora_rank 0, no lora_target_modules): it serves no adapter; build it with"
        " --max-lora-rank"
    )
    narrow = engine_profile("tensorrt_llm", 4, ("attn_q", "attn_v"))
    assert "rank 8 exceeds max_lora_rank 4 of m version 3" in (
        engine_refusal(adapter, 3, narrow) or ""
    )
    q_only = engine_profile("tensorrt_llm", 16, ("attn_q",))
    assert "v_proj (attn_v) is not among lora_target_modules ['attn_q']" in (
        engine_refusal(adapter, 3, q_only) or ""
    )


async def test_a_version_that_cannot_apply_the_adapter_refuses_before_admission(
    registry: ModelRegistry,
) -> None:
    """The façade asks which version answers (a canary's route) and whether it can apply the
    adapter: FAILED_PRECONDITION naming `adapter`, nothing sent, no quota spent."""
    engine = Engine()
    refused_on = {4}  # the canary version, say, was built without LoRA

    def refusal(adapter: ServedAdapter, model: str, version: int) -> str | None:
        return (
            f"adapter {adapter.name}: {model} version {version}" if version in refused_on else None
        )

    generations = Generations(
        registry,
        engine,  # type: ignore[arg-type]
        metrics=FacadeMetrics(registry.names(), process_metrics=False),
        admission=Admission(LimitSettings(requests_per_minute=1)),
        routes=lambda model: Route(model, 3, 4, 99, f"{model}__canary"),
        adapter_refusal=refusal,
    )
    try:
        call = Call(model="m", rpc="Generate", api="grpc", principal=None, request_id="r1")
        plan = validate_generate(pb.GenerateRequest(model="m", prompt="hi", adapter="a"))
        with pytest.raises(FailedPrecondition) as err:
            async for _ in generations.generate(call, lambda: plan):
                pass
        assert err.value.field == "adapter" and err.value.message == "adapter a: m version 4"
        assert status_for(err.value, request_id="r1").code == grpc.StatusCode.FAILED_PRECONDITION
        assert engine.requests == []
        # The one request a minute was not spent: the version that can apply it answers.
        refused_on.clear()
        deltas = [d async for d in generations.generate(call, lambda: plan)]
        assert deltas and len(engine.requests) == 1
        (request,) = engine.requests
        assert (request.triton_model, request.model_version) == ("m__canary", "4")
    finally:
        generations.close()


def test_adapters_the_served_version_cannot_apply_are_named(tmp_path: Path) -> None:
    """What the façade logs at start and after each reload (app.py)."""
    a = dataclasses.replace(
        write_adapter(tmp_path, "a", "m", 11), rank=8, target_modules=("q_proj",)
    )
    x = dataclasses.replace(write_adapter(tmp_path, "x", "other", 13), rank=8)
    served = {"m": (2, engine_profile("tensorrt_llm")), "other": (1, engine_profile("cpu"))}
    assert unservable([a, x], served.get) == [
        "adapter a: max_lora_rank: m version 2 (a TensorRT-LLM engine) was built without LoRA"
        " (max_lora_rank 0, no lora_target_modules): it serves no adapter; build it with"
        " --max-lora-rank"
    ]
    assert unservable([a], {}.get) == []  # a base not served from the repository
