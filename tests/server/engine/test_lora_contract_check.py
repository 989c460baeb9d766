"""At start, adapters of a model whose Triton config lacks the LoRA inputs are refused (logged,
not served): contract_check.refuse_adapters_without_lora against a stand-in ModelConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.server.adapters import AdapterSet, ServedAdapter
from autoglm.server.engine.contract_check import refuse_adapters_without_lora
from autoglm.server.errors import EngineUnavailable
from autoglm.server.models import ModelRegistry, ModelSpec, load_model
from autoglm.triton_models import lora_contract as lc


class Engine:
    def __init__(self, inputs: dict[str, dict[str, str]]) -> None:
        self.inputs = inputs

    async def model_tensors(self, name: str) -> tuple[dict[str, str], dict[str, str]]:
        if name not in self.inputs:
            raise EngineUnavailable("down")
        return self.inputs[name], {}


@pytest.fixture
def registry(model_dir: Path, tmp_path: Path) -> ModelRegistry:
    models = [
        load_model(ModelSpec(name=n, triton_model=n, tokenizer_dir=model_dir))
        for n in ("with", "without", "unreachable")
    ]
    f = tmp_path / "x.npy"
    names = ("with", "without", "unreachable")
    adapters = [ServedAdapter(f"{n}-a", n, i + 1, f, f) for i, n in enumerate(names)]
    return ModelRegistry(models, AdapterSet(adapters))


async def test_adapters_of_a_model_without_lora_inputs_are_refused(
    registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    lora = {t.name: t.data_type for t in lc.LORA_INPUTS}
    engine = Engine({"with": lora, "without": {"input_ids": "TYPE_INT32"}})
    await refuse_adapters_without_lora(engine, registry)  # type: ignore[arg-type]
    # An engine not reachable at start is not judged (health.py keeps the façade NOT_SERVING).
    assert [a.name for a in registry.adapters] == ["unreachable-a", "with-a"]
    assert "adapter without-a: refused, not served" in caplog.text
