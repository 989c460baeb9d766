"""At start: every served Triton model must declare the tensors of the contract the façade will
speak to it (contract.py for token-id engines, vllm_contract.py for text engines).

A model configured with the wrong engine kind (`--model …,engine=vllm` on a TensorRT-LLM
engine, or the reverse) would otherwise fail every request; the façade refuses to start,
naming the model and the missing tensors. An engine that cannot be reached at start is not
checked (health.py keeps the façade NOT_SERVING until it answers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from autoglm.server.adapters import AdapterSet
from autoglm.server.engine.client import EngineClient
from autoglm.server.errors import EngineUnavailable
from autoglm.server.models import ModelRegistry, ServedModel
from autoglm.triton_models import contract
from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models import vllm_contract as vc

log = logging.getLogger("autoglm.server.engine")

# What the façade may send and what it reads, per contract (engine/client.py, text_request.py).
_IDS = (contract.INPUTS, (contract.OUTPUT_IDS,))
_TEXT = (vc.SENT_BY_FACADE, vc.READ_BY_FACADE)


class ContractMismatch(ValueError):
    """A served model does not declare the tensors of the façade's contract for it."""


async def verify_contracts(engine: EngineClient, models: Iterable[ServedModel]) -> None:
    """ContractMismatch naming every model whose Triton config lacks the contract's tensors."""
    problems: list[str] = []
    for model in models:
        name = model.spec.triton_model
        try:
            inputs, outputs = await engine.model_tensors(name)
        except EngineUnavailable as exc:
            log.warning("model %s: tensors not checked at start (%s)", name, exc)
            continue
        sent, read = _TEXT if model.returns_text else _IDS
        found = contract.declared_mismatches(inputs, outputs, sent=sent, read=read)
        if found:
            problems.append(
                f"model {model.spec.name} (Triton model {name}, engine {model.spec.engine}): "
                + "; ".join(found)
            )
    if problems:
        raise ContractMismatch(
            "served models do not speak the contract of their engine kind: " + " | ".join(problems)
        )


async def refuse_adapters_without_lora(engine: EngineClient, registry: ModelRegistry) -> None:
    """Adapters of a model whose Triton config does not declare the LoRA inputs
    (lora_contract.LORA_INPUTS: an engine built without the LoRA plugin, or a template without
    them) are refused at start, logged and not served: every request of theirs would fail."""
    keep = []
    missing_by_base: dict[str, list[str]] = {}
    for base in sorted({a.base for a in registry.adapters}):
        model = registry.get(base)
        if model is None:
            continue
        try:
            inputs, _ = await engine.model_tensors(model.spec.triton_model)
        except EngineUnavailable as exc:
            log.warning("model %s: LoRA inputs not checked at start (%s)", base, exc)
            continue
        missing = [t.name for t in lc.LORA_INPUTS if t.name not in inputs]
        if missing:
            missing_by_base[base] = missing
    for adapter in registry.adapters:
        missing = missing_by_base.get(adapter.base)
        if missing:
            log.error(
                "adapter %s: refused, not served: Triton model of %s does not declare %s",
                adapter.name,
                adapter.base,
                missing,
            )
        else:
            keep.append(adapter)
    registry.adapters = AdapterSet(keep)
