"""Next-token selection for the CPU reference engine, with TensorRT-LLM's sampling semantics.

The CPU engine stands in for a `tensorrtllm` engine behind the same tensor contract, so the same
`runtime_top_k` / `runtime_top_p` / `temperature` / `repetition_penalty` / `random_seed` inputs
must mean the same thing. Source: TensorRT-LLM `docs/source/advanced/gpt-runtime.md`, section
"Sampling Parameters" (and its table "greedy decoding: beamWidth == 1 and topK=0 and topP=0.0f"):

* repetitionPenalty: "multiplicative, irrespective of appearances count", range [0, +inf), 1.0 =
  no effect, and "the tokens of input prompt are included". Applied HF/CTRL style (divide a
  positive logit, multiply a negative one) before anything else. Accepted from
  `MIN_REPETITION_PENALTY` (0.01, sampling_bounds.py) up: near 0 the division overflows.
* temperature: range [0, +inf), 1.0 = no modulation; 0 selects greedy here, as in TensorRT-LLM's
  LLM API ("temperature=0" is its greedy example, `examples/llm-api/llm_sampling.py`), and so
  does any temperature below `GREEDY_TEMPERATURE_BELOW` (1e-5, vLLM's `_SAMPLING_EPS`): dividing
  by a denormal such as 1e-45 would turn every logit into inf.
* topK in [0, 1024], 0 = off; topP in [0, 1]. "If setting topK = 0 and topP = 0.0f, greedy
  search is performed"; "topK > 0 and topP = 0.0f" is plain TopK sampling (so topP = 0 means
  *off* when topK is set); with both set, the topK tokens are renormalised and then
  nucleus-filtered ("TopKTopP sampling"). topP = 1.0 keeps everything, i.e. is also off.
* randomSeed: Int64 in [0, 2^64 - 1].
* presencePenalty / frequencyPenalty: "additive, irrespective of appearances count" /
  "additive, dependent on appearances count", range (-inf, +inf), 0.0 = no effect, and again
  "the tokens of input prompt are included" (unlike vLLM and OpenAI, which count the output
  only). The kernel (`batchApplyPenalty`, cpp/tensorrt_llm/kernels/penaltyKernels.cu) counts
  each token's occurrences in prompt + output, scales the logits by 1 / temperature, then for
  every token that occurred applies repetition, `logit -= presencePenalty`, `logit -=
  frequencyPenalty * count`, in that order. Here too the additive penalties come after the
  temperature (logit / T - p, not (logit - p) / T); the repetition penalty keeps its place before
  it, which gives the same logits since dividing by T > 0 keeps every logit's sign. Greedy
  selection scales nothing and takes the argmax of the penalised logits. Any finite value is
  accepted (the façade keeps callers to [-2, 2], sampling_bounds.py).

Log-probabilities (`return_log_probs`): the chosen token's log-probability in the step's
distribution over the whole vocabulary, after temperature and penalties, before top-k / top-p
truncation: `log_softmax(logits)[token]` (greedy: the maximum of the log-softmax). That is
TensorRT-LLM's unnormalised value, "log_prob = log P(i | i is in vocab)" (`topKStage2Sampling`,
cpp/tensorrt_llm/kernels/samplingTopKKernels.cu, "NOT normalized (same way as OpenAI does)"),
which templates/tensorrt_llm/config.pbtxt selects with `normalize_log_probs` false.

Numbers that cannot be sampled are refused, never passed on: a value out of range fails
`SamplingConfig.validate`, and a value that makes the logits overflow (say temperature 1e-5 on
logits above 3.4e33) fails the step with a `Refusal` naming its tensor, so the engine answers
INVALID_ARGUMENT instead of torch.multinomial's "probability tensor contains either `inf`, `nan`
or element < 0". Non-finite logits from the model itself are the engine's fault (INTERNAL).

Pure logic (torch only, no Triton), so it is tested on its own.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import torch

from autoglm.triton_models import contract
from autoglm.triton_models.refusal import Refusal
from autoglm.triton_models.sampling_bounds import (
    GREEDY_TEMPERATURE_BELOW,
    MIN_REPETITION_PENALTY,
    MIN_REPETITION_PENALTY_F32,
)

__all__ = ["Sampler", "SamplingConfig", "torch_seed"]

_SEED_LIMIT = 2**64  # TensorRT-LLM randomSeed range is [0, 2^64 - 1]
_MASK_32 = 0xFFFF_FFFF


@dataclass(frozen=True)
class SamplingConfig:
    """Per-request sampling parameters, with TensorRT-LLM's defaults meaning "no effect"."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def validate(self) -> None:
        """Raises a Refusal naming the tensor of the first out-of-range field."""
        # `not (x >= 0)` rather than `x < 0` so that NaN is refused too.
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise Refusal(
                contract.TEMPERATURE.name, f"must be a finite number >= 0, got {self.temperature}"
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise Refusal(
                contract.RUNTIME_TOP_K.name, f"must be an integer >= 0, got {self.top_k!r}"
            )
        if not (0.0 <= self.top_p <= 1.0):
            raise Refusal(contract.RUNTIME_TOP_P.name, f"must be in [0, 1], got {self.top_p}")
        penalty = self.repetition_penalty
        if not (math.isfinite(penalty) and penalty >= MIN_REPETITION_PENALTY_F32):
            raise Refusal(
                contract.REPETITION_PENALTY.name,
                f"must be a finite number >= {MIN_REPETITION_PENALTY}, got {penalty}",
            )
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < _SEED_LIMIT):
            raise Refusal(
                contract.SEED.name, f"must be an integer in [0, 2**64), got {self.seed!r}"
            )
        for spec, value in (
            (contract.FREQUENCY_PENALTY, self.frequency_penalty),
            (contract.PRESENCE_PENALTY, self.presence_penalty),
        ):
            if not math.isfinite(value):
                raise Refusal(spec.name, f"must be a finite number, got {value}")

    @property
    def is_greedy(self) -> bool:
        """Argmax selection: top_k == 1, temperature ~ 0, or (top_k == 0 and top_p == 0)."""
        return (
            self.top_k == 1
            or self.temperature < GREEDY_TEMPERATURE_BELOW
            or (self.top_k == 0 and self.top_p == 0)
        )


def _is_int(value: object) -> bool:
    # bool is an int subclass; True as a top_k or seed is a caller bug, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def torch_seed(seed: int) -> int:
    """Reduces a 64-bit request seed to the 32 bits that torch's CPU generator really uses.

    `torch.Generator.manual_seed` accepts 64-bit values, but the CPU generator's mt19937 is
    initialised from `seed & 0xffffffff` only (aten `mt19937_engine::init_with_uint32`), so seeds
    differing only in their high 32 bits would give identical streams. Folding the high half into
    the low half keeps every seed < 2**32 unchanged and lets the high bits matter.
    """
    return (seed ^ (seed >> 32)) & _MASK_32


class Sampler:
    """Selects tokens for one request; owns its RNG so requests never perturb each other.

    One Sampler per request, called from one thread at a time: its generator is state.
    """

    def __init__(self, config: SamplingConfig) -> None:
        config.validate()
        self.config = config
        # A private generator: the global torch RNG is shared by every thread, so drawing from it
        # would make a seeded request depend on what other requests sampled meanwhile.
        self._gen = torch.Generator(device="cpu")
        seed = config.seed if config.seed is not None else secrets.randbits(64)
        self._gen.manual_seed(torch_seed(seed))

    def __call__(self, logits: torch.Tensor, previous_ids: torch.Tensor) -> int:
        """Returns the next token id (`choose` without its log-probability)."""
        return self.choose(logits, previous_ids)[0]

    def choose(
        self, logits: torch.Tensor, previous_ids: torch.Tensor, *, with_log_prob: bool = False
    ) -> tuple[int, float | None]:
        """(next token id, its log-probability when `with_log_prob`, else None).

        logits: [vocab] float32, the last position's logits. previous_ids: [n] int64, the prompt
        plus the tokens generated so far (every penalty covers both).
        """
        config = self.config
        if not math.isfinite(float(logits.max())):  # NaN propagates through max
            raise FloatingPointError("the model produced non-finite logits")
        has_history = previous_ids.numel() > 0
        if config.repetition_penalty != 1.0 and has_history:
            logits = _apply_repetition_penalty(logits, previous_ids, config.repetition_penalty)
            _refuse_overflow(logits, contract.REPETITION_PENALTY.name, config.repetition_penalty)
        greedy = config.is_greedy
        if not greedy:
            logits = logits / config.temperature  # a new tensor: the caller's logits stay intact
            _refuse_overflow(logits, contract.TEMPERATURE.name, config.temperature)
        if (config.presence_penalty or config.frequency_penalty) and has_history:
            logits = _apply_additive_penalties(
                logits, previous_ids, config.presence_penalty, config.frequency_penalty
            )
        token = int(torch.argmax(logits)) if greedy else self._sample(logits)
        if not with_log_prob:
            return token, None
        return token, float(torch.log_softmax(logits, dim=-1)[token])

    def _sample(self, logits: torch.Tensor) -> int:
        """A token drawn from the (temperature-scaled, penalised) ``logits`` [vocab]."""
        config = self.config
        # TensorRT-LLM: topP == 0 with topK > 0 is plain TopK sampling; topP == 1 keeps everything.
        use_top_p = 0.0 < config.top_p < 1.0
        if 0 < config.top_k < logits.numel():
            # [k] each, in descending order: no full sort of the vocabulary. TopKTopP applies the
            # nucleus to the k survivors renormalised, hence the softmax over the k values only.
            values, indices = torch.topk(logits, config.top_k)
            probs = torch.softmax(values, dim=-1)  # [k]
        elif use_top_p:
            probs, indices = _top_p_candidates(torch.softmax(logits, dim=-1), config.top_p)
        else:
            probs = torch.softmax(logits, dim=-1)  # [vocab]
            return int(torch.multinomial(probs, 1, generator=self._gen))
        if use_top_p:
            probs = _nucleus(probs, config.top_p)
        choice = torch.multinomial(probs, 1, generator=self._gen)
        return int(indices[choice])


def _refuse_overflow(logits: torch.Tensor, tensor: str, value: float) -> None:
    """A Refusal naming `tensor` when scaling by its `value` left no finite largest logit.

    With a finite maximum the softmax is well defined (it subtracts the maximum; -inf entries get
    probability 0); an inf maximum, or every entry -inf, would give NaN probabilities.
    """
    top = float(logits.max())
    if not math.isfinite(top):
        raise Refusal(tensor, f"{value!r} scales the logits beyond float32 (largest: {top})")


# Top-p alone needs the tokens in probability order only until their mass reaches top_p, which
# for a trained model is usually a few dozen tokens: a top-k of this size (~0.4 ms on a 49k vocab)
# replaces the full sort (~5 ms) unless the distribution is very flat.
_TOP_P_CANDIDATES = 256


def _top_p_candidates(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Descending (probs, ids) long enough to hold the whole nucleus of ``probs`` [vocab]."""
    if probs.numel() > _TOP_P_CANDIDATES:
        values, indices = torch.topk(probs, _TOP_P_CANDIDATES)  # [c] each
        # The nucleus is a prefix of the descending order: it fits if these reach top_p.
        if float(values.sum()) >= top_p:
            return values, indices
    return torch.sort(probs, descending=True)  # [vocab] each


def _apply_repetition_penalty(
    logits: torch.Tensor, previous_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL/HF repetition penalty over the *set* of previous ids (count does not matter)."""
    ids = torch.unique(previous_ids)  # [u]
    selected = logits[ids]  # [u]
    penalised = torch.where(selected > 0, selected / penalty, selected * penalty)
    logits = logits.clone()
    logits[ids] = penalised
    return logits


def _apply_additive_penalties(
    logits: torch.Tensor, previous_ids: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """TensorRT-LLM's presence then frequency penalty over the previous ids (a new tensor).

    Each token that occurred loses `presence` once and `frequency` per occurrence. A value whose
    result leaves no finite largest logit (a huge negative penalty overflowing to +inf, or every
    token pushed to -inf) is refused naming its tensor, like the temperature.
    """
    ids, counts = torch.unique(previous_ids, return_counts=True)  # [u] each
    logits = logits.clone()
    if presence:
        logits[ids] = logits[ids] - presence
        _refuse_overflow(logits, contract.PRESENCE_PENALTY.name, presence)
    if frequency:
        logits[ids] = logits[ids] - frequency * counts.to(logits.dtype)
        _refuse_overflow(logits, contract.FREQUENCY_PENALTY.name, frequency)
    return logits


def _nucleus(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zeroes the tail beyond the smallest prefix whose mass reaches ``top_p``.

    ``sorted_probs`` is descending. A token is kept when the mass *before* it is still below
    top_p; the most likely token is kept whatever top_p is: a top_p below float32's smallest
    denormal (5e-324, found by the fuzz in test_sampling.py) compares as 0 in the float32
    tensor, which would keep nothing and fail multinomial. multinomial renormalises.
    """
    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # mass before each token
    keep[0] = True
    return torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
