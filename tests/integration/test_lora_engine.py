"""LoRA adapters in the CPU reference engine in the real Triton, called with tritonclient's gRPC
stream as the façade calls a `tensorrtllm` engine (the tensors of lora_contract.py, no façade).

Two adapters of SmolLM2 are made in-process with PEFT (build_engine/tiny_lora.py), registered
(build_engine/adapters.py) and sent as their registered arrays: a task's first request carries
`lora_task_id` + `lora_weights` + `lora_config`, later ones the id alone, as the TensorRT-LLM
backend expects (docs/lora.md of the backend; lora_contract.py).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from autoglm.build_engine import adapters as ad
from autoglm.build_engine.tiny_lora import make_adapter
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.triton_models import contract
from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models.repository import CpuEngineConfig, render_cpu_model

pytestmark = pytest.mark.integration

MODEL = "smollm2-lora"
PROMPT = "The capital of France is"
TOKENS = 8
RESPONSE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[TritonProcess]:
    """Triton with the CPU reference engine alone, on plaintext loopback."""
    repo = tmp_path_factory.mktemp("triton-lora") / "model_repository"
    # A cache of one adapter: a task is evicted as soon as another one is used.
    config = CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir, lora_cache_size=1)
    render_cpu_model(repo, config)
    proc = TritonProcess(TritonOptions(model_repository=repo, models=(MODEL,), exit_timeout_s=5))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def registry(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("adapters")
    root = tmp / "adapters"
    for name, seed, targets in (("a", 1, ("q_proj", "v_proj")), ("b", 2, ("o_proj", "down_proj"))):
        source = make_adapter(model_dir, tmp / f"src-{name}", seed=seed, targets=targets)
        ad.add(root, name, base=MODEL, base_dir=model_dir, source=source)
    return root


@pytest.fixture(scope="module")
def adapters(registry: Path) -> dict[str, ad.Adapter]:
    return ad.load_registry(registry)


@pytest.fixture(scope="module")
def prompt_ids(model_dir: Path) -> list[int]:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(PROMPT).ids


def _input(spec: contract.TensorSpec, arr: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(spec.name, list(arr.shape), spec.wire_dtype)
    tensor.set_data_from_numpy(arr.astype(spec.numpy_dtype))
    return tensor


def request(
    prompt_ids: list[int], adapter: ad.Adapter | None = None, *, with_weights: bool = True
) -> list[grpcclient.InferInput]:
    """The façade's tensors (batch dim 1), greedy, not streamed; plus the adapter's."""
    out = [
        _input(contract.INPUT_IDS, np.array([prompt_ids])),
        _input(contract.INPUT_LENGTHS, np.array([[len(prompt_ids)]])),
        _input(contract.REQUEST_OUTPUT_LEN, np.array([[TOKENS]])),
        _input(contract.TEMPERATURE, np.array([[0.0]])),
        _input(contract.STREAMING, np.array([[False]])),
        _input(contract.EXCLUDE_INPUT_IN_OUTPUT, np.array([[True]])),
    ]
    if adapter is not None:
        out.append(_input(lc.LORA_TASK_ID, np.array([[adapter.task_id]])))
        if with_weights:
            weights, config = ad.verified_tensors(adapter)  # [1, rows, width], [1, rows, 3]
            out += [_input(lc.LORA_WEIGHTS, weights), _input(lc.LORA_CONFIG, config)]
    return out


class Stream:
    """One tritonclient gRPC stream; responses by request id."""

    def __init__(self, triton: TritonProcess) -> None:
        self.client = grpcclient.InferenceServerClient(triton.grpc_target)
        self.queue: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.queue.put((result, error)))

    def send(self, request_id: str, inputs: list[grpcclient.InferInput]) -> None:
        self.client.async_stream_infer(
            MODEL, inputs, request_id=request_id, enable_empty_final_response=True
        )

    def collect(self, count: int) -> dict[str, list[int] | str]:
        """Each of `count` requests' generated ids, or its error text."""
        out: dict[str, list[int] | str] = {}
        done: set[str] = set()
        while len(done) < count:
            result, error = self.queue.get(timeout=RESPONSE_TIMEOUT_S)
            if error is not None:
                # A decoupled model's error response carries no request id here: one at a time.
                out[f"error{len(done)}"] = str(error)
                done.add(f"error{len(done)}")
                continue
            response = result.get_response()
            ids = result.as_numpy(contract.OUTPUT_IDS.name)
            if ids is not None:
                out[response.id] = [int(t) for t in ids.reshape(-1)]
            params = response.parameters
            if "triton_final_response" in params and params["triton_final_response"].bool_param:
                done.add(response.id)
        return out

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture
def stream(triton: TritonProcess) -> Iterator[Stream]:
    s = Stream(triton)
    yield s
    s.close()


def generate(stream: Stream, inputs: list[grpcclient.InferInput]) -> list[int] | str:
    stream.send("one", inputs)
    return next(iter(stream.collect(1).values()))


def test_adapter_changes_output_and_base_is_unchanged(
    stream: Stream, prompt_ids: list[int], adapters: dict[str, ad.Adapter]
) -> None:
    base = generate(stream, request(prompt_ids))
    assert isinstance(base, list) and len(base) == TOKENS
    tuned = generate(stream, request(prompt_ids, adapters["a"]))
    assert isinstance(tuned, list) and tuned != base
    assert generate(stream, request(prompt_ids)) == base
    # Later requests of the task carry only its id: the engine's cached adapter answers.
    assert generate(stream, request(prompt_ids, adapters["a"], with_weights=False)) == tuned


def test_two_adapters_in_one_batch(
    stream: Stream, prompt_ids: list[int], adapters: dict[str, ad.Adapter]
) -> None:
    alone = {
        name: generate(stream, request(prompt_ids, adapters.get(name)))
        for name in ("base", "a", "b")
    }
    assert len({tuple(v) for v in alone.values()}) == 3
    # All at once on one stream: the engine runs them concurrently (max_concurrency 4).
    for i in range(2):
        for name in ("a", "b", "base"):
            stream.send(f"{name}-{i}", request(prompt_ids, adapters.get(name)))
    together = stream.collect(6)
    assert together == {f"{name}-{i}": alone[name] for i in range(2) for name in alone}


def test_uncached_task_id_gets_the_executors_error(stream: Stream, prompt_ids: list[int]) -> None:
    unknown = ad.Adapter("x", MODEL, 4242, 8, ("q_proj",), {}, {})
    got = generate(stream, request(prompt_ids, unknown, with_weights=False))
    assert isinstance(got, str)
    assert lc.not_cached_task(got) == 4242
    assert lc.not_cached_message(4242) in got


def test_evicted_task_needs_its_weights_again(
    stream: Stream, prompt_ids: list[int], adapters: dict[str, ad.Adapter]
) -> None:
    """The resend the façade does on the engine's answer: weights again, and it is served."""
    a, b = adapters["a"], adapters["b"]
    tuned = generate(stream, request(prompt_ids, a))
    generate(stream, request(prompt_ids, b))  # evicts a (lora_cache_size 1)
    got = generate(stream, request(prompt_ids, a, with_weights=False))
    assert isinstance(got, str) and lc.not_cached_task(got) == a.task_id
    assert generate(stream, request(prompt_ids, a)) == tuned
    assert generate(stream, request(prompt_ids, a, with_weights=False)) == tuned


def test_changed_weights_are_refused_and_nothing_is_served(
    stream: Stream, prompt_ids: list[int], registry: Path, tmp_path: Path
) -> None:
    adapter = ad.load_registry(registry)["b"]
    path = adapter.weights_path
    original = path.read_bytes()
    weights = np.load(path)
    weights[0, 0, :4] = 1.0
    try:
        np.save(path, weights)
        with pytest.raises(ad.AdapterError, match="sha256"):
            request(prompt_ids, ad.load_registry(registry)["b"])
    finally:
        path.write_bytes(original)
    ad.verify(ad.load_registry(registry)["b"])
