"""LoRA adapters in the CPU reference engine, through the TensorRT-LLM backend's tensors.

A request names its adapter by `lora_task_id`; its first request also carries `lora_weights` and
`lora_config` (lora_contract.py). As the executor's PEFT cache does (`PeftCacheManager`,
cited in lora_contract.py), the engine keeps the rebuilt adapter by task id in a bounded cache
that evicts the least recently used task, and answers a task id alone that is not cached with
the executor's exact error text (`LoraNotCached`), on which the façade resends the weights.

The deltas are applied functionally, per request: a forward hook on each target Linear adds
`(x @ A.T) @ B.T` (B already scaled, lora_format.py) when the calling thread's current adapter
(a ContextVar, set around each forward pass by the runner) has that (layer, module). That is
what PEFT's LoRA layer computes (`lora_B(lora_A(dropout(x))) * scaling`, peft/tuners/lora/
layer.py, without dropout at inference), but with no state on the model: requests with
different adapters run at the same time in their own threads without seeing each other's, and a
request without one gets the base model's output unchanged. (PEFT's own wrapper switches the
active adapter on the shared model, which two threads would race on.)
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

from autoglm.triton_models import lora_contract as lc
from autoglm.triton_models import lora_format

# Our defaults: the engine build's --max_lora_rank (build_engine/adapters.DEFAULT_MAX_RANK) and
# a host cache of 8 adapters (the backend sizes its cache in bytes: lora_cache_host_memory_bytes).
DEFAULT_MAX_RANK = 64
DEFAULT_CACHE_SIZE = 8

# (layer, HF module) -> (A [rank, in], B [out, rank] scaled), float32 torch tensors
TorchModules = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

_ACTIVE: ContextVar[TorchModules | None] = ContextVar("autoglm_lora_active", default=None)
_LINEAR = re.compile(r"(?:^|\.)layers\.([0-9]+)\.(?:self_attn|mlp)\.([a-z_]+)$")


class LoraNotCached(RuntimeError):
    """A task id sent without weights that the cache does not hold (the executor's text)."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(lc.not_cached_message(task_id))


@dataclass(frozen=True, slots=True)
class LoraRequest:
    """A request's LoRA tensors: the task id, and the arrays on the task's first request."""

    task_id: int
    weights: np.ndarray | None = None  # [1, rows, width] float16
    config: np.ndarray | None = None  # [1, rows, 3] int32


class LoraCache:
    """Rebuilt adapters by task id, least recently used evicted first (thread-safe)."""

    def __init__(self, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError(f"lora cache capacity: must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[int, TorchModules] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, task_id: int, modules: TorchModules) -> None:
        with self._lock:
            self._items[task_id] = modules
            self._items.move_to_end(task_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, task_id: int) -> TorchModules:
        with self._lock:
            modules = self._items.get(task_id)
            if modules is None:
                raise LoraNotCached(task_id)
            self._items.move_to_end(task_id)
            return modules

    def __contains__(self, task_id: int) -> bool:
        with self._lock:
            return task_id in self._items


class LoraApplier:
    """Hooks on a causal LM's decoder Linear layers, applying the thread's current adapter."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_rank: int = DEFAULT_MAX_RANK,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.max_rank = max_rank
        self.cache = LoraCache(cache_size)
        self.dims: dict[str, tuple[int, int]] = {}  # HF module -> (in, out)
        layers: set[int] = set()
        for name, module in model.named_modules():
            found = _LINEAR.search(name)
            if not found or found.group(2) not in lc.HF_TO_TRTLLM:
                continue
            if not isinstance(module, torch.nn.Linear):  # ModelOpt's QuantLinear is one too
                continue
            layer, hf_module = int(found.group(1)), found.group(2)
            layers.add(layer)
            self.dims.setdefault(hf_module, (module.in_features, module.out_features))
            module.register_forward_hook(_hook((layer, hf_module)))
        self.num_layers = max(layers) + 1 if layers else 0

    def resolve(self, lora: LoraRequest) -> TorchModules:
        """The request's adapter: rebuilt from its arrays (and cached), or the cached one;
        LoraNotCached for an unknown task id alone, a Refusal for malformed arrays."""
        if lora.weights is None or lora.config is None:
            return self.cache.get(lora.task_id)
        rebuilt = lora_format.from_trtllm(
            lora.weights,
            lora.config,
            dims=self.dims,
            num_layers=self.num_layers,
            max_rank=self.max_rank,
        )
        modules = {
            key: (torch.from_numpy(a), torch.from_numpy(b)) for key, (a, b) in rebuilt.items()
        }
        self.cache.put(lora.task_id, modules)
        return modules


@contextlib.contextmanager
def active(modules: TorchModules | None) -> Iterator[None]:
    """Make `modules` the current thread's adapter for the forward passes inside."""
    token = _ACTIVE.set(modules)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _hook(key: tuple[int, str]):  # type: ignore[no-untyped-def]
    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor):  # type: ignore[no-untyped-def]
        modules = _ACTIVE.get()
        if not modules:
            return None
        pair = modules.get(key)
        if pair is None:
            return None
        a, b = pair
        x = args[0]  # [batch, tokens, in]
        return output + (x.to(a.dtype) @ a.T) @ b.T  # [batch, tokens, out]

    return hook
