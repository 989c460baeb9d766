"""LoRA in the CPU reference engine (cpu_engine/lora.py), without Triton: the request tensors,
the task cache, and the deltas applied to the real SmolLM2 checked against PEFT itself.

The adapters are made in-process with PEFT (build_engine/tiny_lora.py) and registered, so the
engine gets exactly the arrays a request carries (build_engine/adapters.verified_tensors).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from autoglm.build_engine import adapters as ad
from autoglm.build_engine.tiny_lora import make_adapter
from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models.cpu_engine.lora import LoraCache, LoraNotCached, LoraRequest
from autoglm.triton_models.cpu_engine.request import EngineRequest, RequestError, parse_lora
from autoglm.triton_models.cpu_engine.runner import CausalLMRunner
from autoglm.triton_models.cpu_engine.sampling import SamplingConfig
from autoglm.triton_models.refusal import Refusal

PROMPT = "The capital of France is"
TOKENS = 8


@pytest.fixture(scope="module")
def registry(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ad.Adapter]:
    tmp = tmp_path_factory.mktemp("lora")
    root = tmp / "adapters"
    for name, seed, targets in (("a", 1, ("q_proj", "v_proj")), ("b", 2, ("o_proj", "down_proj"))):
        source = make_adapter(model_dir, tmp / f"src-{name}", seed=seed, targets=targets)
        ad.add(root, name, base="smollm2", base_dir=model_dir, source=source)
    return ad.load_registry(root)


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> CausalLMRunner:
    return CausalLMRunner(model_dir, lora_cache_size=2)


@pytest.fixture(scope="module")
def prompt_ids(model_dir: Path) -> tuple[int, ...]:
    return tuple(Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(PROMPT).ids)


def lora_of(adapter: ad.Adapter, *, with_weights: bool = True) -> LoraRequest:
    if not with_weights:
        return LoraRequest(adapter.task_id)
    weights, config = ad.verified_tensors(adapter)
    return LoraRequest(adapter.task_id, weights, config)


def greedy(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], lora: LoraRequest | None = None
) -> list[int]:
    req = EngineRequest(
        input_ids=prompt_ids,
        max_new_tokens=TOKENS,
        end_id=None,
        streaming=True,
        exclude_input_in_output=True,
        sampling=SamplingConfig(temperature=0.0),
        lora=lora,
    )
    return list(runner.generate(req, is_cancelled=lambda: False))


def test_parse_lora_tensors() -> None:
    task = np.array([[7]], dtype=np.uint64)
    weights = np.zeros((1, 2, 10), np.float16)
    config = np.zeros((1, 2, 3), np.int32)
    assert parse_lora({}) is None
    assert parse_lora({"lora_task_id": task}) == LoraRequest(7)
    got = parse_lora({"lora_task_id": task, "lora_weights": weights, "lora_config": config})
    assert got is not None and got.task_id == 7 and got.weights is weights
    for tensors, name in (
        ({"lora_weights": weights, "lora_config": config}, "lora_task_id"),
        ({"lora_task_id": task, "lora_weights": weights}, "lora_config"),
        ({"lora_task_id": task, "lora_config": config}, "lora_weights"),
        ({"lora_task_id": task, "lora_weights": weights[0], "lora_config": config}, "lora_weights"),
        (
            {"lora_task_id": task, "lora_weights": weights, "lora_config": config[..., :2]},
            "lora_config",
        ),
    ):
        with pytest.raises(RequestError, match=f"'{name}'"):
            parse_lora(tensors)


def test_cache_evicts_the_least_recently_used() -> None:
    cache = LoraCache(2)
    cache.put(1, {})
    cache.put(2, {})
    cache.get(1)  # 2 is now the least recently used
    cache.put(3, {})
    assert 1 in cache and 3 in cache and 2 not in cache
    with pytest.raises(LoraNotCached) as caught:
        cache.get(2)
    assert str(caught.value) == lc.not_cached_message(2)


def test_adapter_changes_greedy_output_and_base_is_unchanged(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], registry: dict[str, ad.Adapter]
) -> None:
    base = greedy(runner, prompt_ids)
    tuned = greedy(runner, prompt_ids, lora_of(registry["a"]))
    assert tuned != base
    assert greedy(runner, prompt_ids) == base
    # Later requests of the task carry its id alone and get the cached adapter.
    assert greedy(runner, prompt_ids, lora_of(registry["a"], with_weights=False)) == tuned


def test_deltas_are_peft_s(
    runner: CausalLMRunner,
    model_dir: Path,
    prompt_ids: tuple[int, ...],
    registry: dict[str, ad.Adapter],
) -> None:
    """The engine's functional deltas from the fp16 arrays give PEFT's own logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from autoglm.triton_models.cpu_engine import lora as lora_mod

    adapter = registry["a"]
    ids = torch.tensor([prompt_ids])
    modules = runner.lora.resolve(lora_of(adapter))
    with torch.inference_mode(), lora_mod.active(modules):
        ours = runner.model(input_ids=ids).logits
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(adapter.files["source/adapter_config.json"].parent))
    with torch.inference_mode():
        theirs = peft(input_ids=ids).logits
    # The arrays are float16 on the wire (as the backend declares lora_weights).
    torch.testing.assert_close(ours, theirs, atol=0.05, rtol=0.01)
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_concurrent_requests_do_not_see_each_others_adapter(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], registry: dict[str, ad.Adapter]
) -> None:
    loras = [None, lora_of(registry["a"]), lora_of(registry["b"])]
    alone = [greedy(runner, prompt_ids, lora) for lora in loras]
    assert len({tuple(o) for o in alone}) == 3
    together: list[list[int] | None] = [None] * 6
    barrier = threading.Barrier(6)

    def run(i: int) -> None:
        barrier.wait()
        together[i] = greedy(runner, prompt_ids, loras[i % 3])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone + alone


def test_uncached_task_id_is_the_executors_error(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...]
) -> None:
    with pytest.raises(LoraNotCached) as caught:
        greedy(runner, prompt_ids, LoraRequest(12345))
    assert str(caught.value) == (
        "LoRA task 12345 not found in cache. Please send LoRA weights with request"
    )


def test_malformed_arrays_are_refused_naming_the_tensor(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], registry: dict[str, ad.Adapter]
) -> None:
    weights, config = ad.verified_tensors(registry["a"])
    bad = config.copy()
    bad[0, 0, lc.CONFIG_LAYER] = 99
    with pytest.raises(Refusal, match="'lora_config'"):
        greedy(runner, prompt_ids, LoraRequest(1, weights, bad))
    with pytest.raises(Refusal, match="'lora_weights'"):
        greedy(runner, prompt_ids, LoraRequest(1, weights[:, :, :10], config))
    assert 1 not in runner.lora.cache
