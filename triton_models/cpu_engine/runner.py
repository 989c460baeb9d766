"""Autoregressive generation with a Hugging Face causal LM on CPU (the reference engine's core).

No Triton imports: the Triton adapter (model.py) feeds EngineRequests in and sends the yielded
token ids out, so this loop is tested directly. The KV cache is reused between steps, so each
step costs one token's forward pass.

A quantized CPU version (`--sku cpu --precision fp8|int8_sq|int8_wo`) runs the build's ModelOpt
fake-quant model instead of the plain fp32 one (fake_quant.py): same HF folder, plus the
calibrated quantizers restored on top.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from autoglm.triton_models.cpu_engine import fake_quant, lora
from autoglm.triton_models.cpu_engine.request import EngineRequest
from autoglm.triton_models.cpu_engine.sampling import Sampler


class CausalLMRunner:
    """Loads one HF model folder once and runs any number of generations (thread-safe)."""

    def __init__(
        self,
        model_dir: Path,
        *,
        torch_threads: int = 1,
        precision: str = "fp32",
        fake_quant_dir: Path | None = None,
        max_lora_rank: int = lora.DEFAULT_MAX_RANK,
        lora_cache_size: int = lora.DEFAULT_CACHE_SIZE,
    ) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        # One intra-op thread per generation: concurrency comes from running several requests in
        # parallel threads (torch releases the GIL inside kernels), which uses the cores better
        # for a small model than splitting every tiny matmul across them.
        torch.set_num_threads(torch_threads)
        self.config = AutoConfig.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()
        if (precision == "fp32") != (fake_quant_dir is None):
            raise fake_quant.FakeQuantError(
                f"precision {precision!r} with fake_quant_dir {fake_quant_dir}: fp32 serves the HF "
                "weights as they are, every other precision needs its fake-quant directory"
            )
        if fake_quant_dir is not None:
            self.model = fake_quant.restore(self.model, fake_quant_dir, precision=precision)
        self.precision = precision
        self.vocab_size = int(self.config.vocab_size)
        # LoRA adapters by task id, applied per request (lora.py); hooks on the final model.
        self.lora = lora.LoraApplier(self.model, max_rank=max_lora_rank, cache_size=lora_cache_size)

    def generate(
        self, request: EngineRequest, *, is_cancelled: Callable[[], bool]
    ) -> Iterator[int]:
        """Yield generated token ids one at a time (`steps` without the log-probabilities)."""
        for token, _ in self.steps(request, is_cancelled=is_cancelled):
            yield token

    def steps(
        self, request: EngineRequest, *, is_cancelled: Callable[[], bool]
    ) -> Iterator[tuple[int, float | None]]:
        """Yield (token id, its log-probability) one token at a time; the log-probability is
        None unless `request.return_log_probs` (sampling.py says which value it is).

        Ends when `end_id` is produced (not yielded, as TensorRT-LLM excludes it from the
        sequence length), when a stop word's ids complete (yielded, as TensorRT-LLM keeps stop
        words in the output), after `max_new_tokens`, or as soon as `is_cancelled()` is true.
        """
        sampler = Sampler(request.sampling)
        # Before the first token: an uncached task id alone raises LoraNotCached, bad arrays a
        # Refusal naming the tensor.
        adapter = self.lora.resolve(request.lora) if request.lora is not None else None
        with_log_prob = request.return_log_probs
        history = torch.tensor(request.input_ids, dtype=torch.long)
        generated: list[int] = []
        input_ids = history.unsqueeze(0)  # [1, prompt_tokens]
        past = None
        with torch.inference_mode():
            for _ in range(request.max_new_tokens):
                if is_cancelled():
                    return
                with lora.active(adapter):
                    out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()  # [vocab]
                token, log_prob = sampler.choose(logits, history, with_log_prob=with_log_prob)
                if token == request.end_id:
                    return
                generated.append(token)
                yield token, log_prob
                if _ends_with_stop_word(generated, request.stop_words):
                    return
                history = torch.cat([history, torch.tensor([token], dtype=torch.long)])
                input_ids = torch.tensor([[token]], dtype=torch.long)  # [1, 1]


def _ends_with_stop_word(generated: list[int], stop_words: tuple[tuple[int, ...], ...]) -> bool:
    return any(len(w) <= len(generated) and tuple(generated[-len(w) :]) == w for w in stop_words)
