"""Sampler: TensorRT-LLM sampling semantics, determinism and per-request RNG isolation."""

from __future__ import annotations

import math
import threading
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoglm.triton_models.cpu_engine.sampling import Sampler, SamplingConfig, torch_seed
from autoglm.triton_models.refusal import Refusal

VOCAB = 49152
NO_HISTORY = torch.empty(0, dtype=torch.int64)
# The tensors a sampling value arrives in (contract.py).
TENSORS = {
    "temperature",
    "runtime_top_k",
    "runtime_top_p",
    "repetition_penalty",
    "seed",
    "frequency_penalty",
    "presence_penalty",
}


def random_logits(seed: int, vocab: int = VOCAB) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=gen, dtype=torch.float32) * 3  # [vocab]


def logits_from_probs(probs: list[float], vocab: int = 64) -> torch.Tensor:
    """[vocab] logits whose softmax puts ``probs`` on the first ids and ~0 elsewhere."""
    logits = torch.full((vocab,), -1e4, dtype=torch.float32)
    logits[: len(probs)] = torch.log(torch.tensor(probs, dtype=torch.float32))
    return logits


def draw(config: SamplingConfig, logits: torch.Tensor, n: int, previous=NO_HISTORY) -> Counter:
    sampler = Sampler(config)
    return Counter(sampler(logits, previous) for _ in range(n))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_k", True),
        ("top_p", -0.01),
        ("top_p", 1.01),
        ("top_p", math.nan),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", 1e-45),
        ("repetition_penalty", 0.0099),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", math.nan),
        ("repetition_penalty", math.inf),
        ("seed", -1),
        ("seed", 2**64),
        ("seed", 1.5),
        ("frequency_penalty", math.nan),
        ("frequency_penalty", math.inf),
        ("presence_penalty", -math.inf),
        ("presence_penalty", math.nan),
    ],
)
def test_validate_names_the_field(field: str, value: object) -> None:
    config = SamplingConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(Refusal, match=field) as info:
        config.validate()
    assert info.value.tensor in TENSORS
    with pytest.raises(Refusal, match=field):
        Sampler(config)


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(),
        SamplingConfig(temperature=0.0, top_k=0, top_p=0.0, repetition_penalty=0.5, seed=0),
        SamplingConfig(temperature=2.0, top_k=1024, top_p=1.0, seed=2**64 - 1),
    ],
)
def test_validate_accepts_range_bounds(config: SamplingConfig) -> None:
    config.validate()


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(temperature=0.0, seed=1),
        SamplingConfig(temperature=0.0, top_k=50, top_p=0.9, seed=1),
        SamplingConfig(top_k=0, top_p=0.0, seed=1),  # TensorRT-LLM: topK=0 and topP=0 is greedy
        SamplingConfig(top_k=1, temperature=1.0, seed=1),
        SamplingConfig(top_k=1, temperature=100.0, seed=1),
        SamplingConfig(top_k=1, temperature=1e-3, top_p=0.5, seed=1),
        # Below 1e-5 (vLLM's _SAMPLING_EPS) temperature is greedy: never logits / 1e-45.
        SamplingConfig(temperature=1e-45, seed=1),
        SamplingConfig(temperature=5e-324, top_k=50, top_p=0.9, seed=1),
        SamplingConfig(temperature=-0.0, seed=1),
        SamplingConfig(temperature=9.99e-6, seed=1),
    ],
)
def test_greedy_equals_argmax(config: SamplingConfig) -> None:
    sampler = Sampler(config)
    for step in range(20):
        logits = random_logits(step)
        assert sampler(logits, NO_HISTORY) == int(torch.argmax(logits))


def test_does_not_modify_callers_logits() -> None:
    logits = random_logits(0)
    before = logits.clone()
    history = torch.arange(100, dtype=torch.int64)
    Sampler(SamplingConfig(temperature=0.7, top_k=20, repetition_penalty=1.3, seed=3))(
        logits, history
    )
    Sampler(SamplingConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.3, seed=3))(
        logits, history
    )
    assert torch.equal(logits, before)


SAMPLING_CONFIGS = [
    SamplingConfig(seed=1234),
    SamplingConfig(temperature=0.8, top_k=40, seed=1234),
    SamplingConfig(temperature=1.2, top_p=0.9, seed=1234),
    SamplingConfig(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=1234),
]


@pytest.mark.parametrize("config", SAMPLING_CONFIGS)
def test_same_seed_same_tokens(config: SamplingConfig) -> None:
    first, second = Sampler(config), Sampler(config)
    history = torch.tensor([5, 6, 7], dtype=torch.int64)
    tokens_a = [first(random_logits(step) / 3, history) for step in range(50)]
    torch.manual_seed(999)  # the global RNG must not matter
    torch.rand(10)
    tokens_b = [second(random_logits(step) / 3, history) for step in range(50)]
    assert tokens_a == tokens_b
    assert len(set(tokens_a)) > 1  # it really sampled


def test_determinism_is_independent_of_other_threads() -> None:
    """Each request owns its generator: concurrent samplers do not perturb each other."""
    steps = 200
    flat = torch.zeros(1000, dtype=torch.float32)
    configs = [SamplingConfig(top_k=100, seed=seed) for seed in range(8)]
    expected: list[list[int]] = []
    for config in configs:
        sampler = Sampler(config)
        expected.append([sampler(flat, NO_HISTORY) for _ in range(steps)])

    results: list[list[int]] = [[] for _ in configs]
    barrier = threading.Barrier(len(configs))

    def worker(index: int) -> None:
        sampler = Sampler(configs[index])
        barrier.wait()
        for _ in range(steps):
            results[index].append(sampler(flat, NO_HISTORY))
            torch.rand(3)  # noise on the global RNG

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(configs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_different_seeds_differ_on_a_flat_distribution() -> None:
    flat = torch.zeros(VOCAB, dtype=torch.float32)

    def tokens(seed: int) -> list[int]:
        sampler = Sampler(SamplingConfig(seed=seed))
        return [sampler(flat, NO_HISTORY) for _ in range(20)]

    assert tokens(1) != tokens(2)
    # torch's CPU generator only uses the low 32 bits of a seed; the high bits must still count.
    assert tokens(1) != tokens(1 + 2**32)
    assert tokens(2**63) != tokens(0)


def test_unseeded_samplers_are_random() -> None:
    flat = torch.zeros(VOCAB, dtype=torch.float32)
    runs = set()
    for _ in range(3):
        sampler = Sampler(SamplingConfig())
        runs.add(tuple(sampler(flat, NO_HISTORY) for _ in range(10)))
    assert len(runs) == 3


def test_torch_seed_reduction() -> None:
    for seed in (0, 1, 42, 2**32 - 1):
        assert torch_seed(seed) == seed  # small seeds keep their usual meaning
    for seed in (2**32, 2**64 - 1, 1 + 2**40, 0xDEADBEEF_CAFEBABE):
        assert 0 <= torch_seed(seed) < 2**32
    assert torch_seed(1) != torch_seed(1 + 2**32)
    assert torch_seed(2**64 - 1) == torch_seed(2**64 - 1)


def test_top_k_restricts_to_the_k_best() -> None:
    logits = random_logits(7)
    best = set(torch.topk(logits, 5).indices.tolist())
    # A high temperature flattens the five survivors so each shows up.
    counts = draw(SamplingConfig(temperature=20.0, top_k=5, seed=11), logits, 2000)
    assert set(counts) == best


def test_top_k_with_top_p_zero_is_top_k_sampling() -> None:
    """TensorRT-LLM: "topK > 0 and topP = 0.0f" is TopK sampling, not greedy."""
    counts = draw(SamplingConfig(top_k=3, top_p=0.0, seed=5), torch.zeros(64), 500)
    assert len(counts) == 3


def test_top_p_restricts_to_the_nucleus() -> None:
    logits = logits_from_probs([0.5, 0.3, 0.1, 0.05, 0.05])
    # Mass before id 1 is 0.5 < 0.7, before id 2 it is 0.8: the nucleus is {0, 1}.
    counts = draw(SamplingConfig(top_p=0.7, seed=3), logits, 2000)
    assert set(counts) == {0, 1}
    assert 0.55 < counts[0] / 2000 < 0.70  # 0.5 / 0.8 = 0.625 after renormalisation


@pytest.mark.parametrize(
    ("scale", "shortcut"), [(0.5, False), (1.0, True)], ids=["flat: full sort", "peaked: top-k"]
)
def test_top_p_nucleus_on_a_full_vocabulary(scale: float, shortcut: bool) -> None:
    """Both ways of finding the nucleus (full sort, or a top-256 that already holds it) agree."""
    logits = random_logits(21) * scale
    probs, order = torch.sort(torch.softmax(logits, dim=-1), descending=True)
    assert (float(probs[:256].sum()) >= 0.6) == shortcut  # which path the sampler takes
    mass_before = torch.cumsum(probs, dim=-1) - probs
    nucleus = set(order[mass_before < 0.6].tolist())
    counts = draw(SamplingConfig(top_p=0.6, seed=17), logits, 60)
    assert set(counts) <= nucleus
    assert len(counts) > 1


@pytest.mark.parametrize("top_p", [1e-6, 1e-45, 5e-324])  # 5e-324 is 0 as a float32
def test_top_p_keeps_at_least_one_token(top_p: float) -> None:
    logits = logits_from_probs([0.4, 0.35, 0.25])
    assert set(draw(SamplingConfig(top_p=top_p, seed=3), logits, 200)) == {0}


def test_top_p_one_keeps_everything() -> None:
    counts = draw(SamplingConfig(top_p=1.0, seed=4), logits_from_probs([0.25] * 4), 2000)
    assert set(counts) == {0, 1, 2, 3}


def test_top_p_applies_to_the_renormalised_top_k() -> None:
    """TensorRT-LLM TopKTopP: the k survivors are renormalised before the nucleus cut."""
    logits = logits_from_probs([0.4, 0.3, 0.2, 0.1])
    # Over the full distribution top_p=0.5 keeps {0, 1} (mass before id 1 is 0.4).
    assert set(draw(SamplingConfig(top_p=0.5, seed=9), logits, 500)) == {0, 1}
    # Within top_k=2 the masses are 4/7 and 3/7: mass before id 1 is 0.57 >= 0.5, so only id 0.
    assert set(draw(SamplingConfig(top_k=2, top_p=0.5, seed=9), logits, 500)) == {0}


def test_temperature_sharpens_and_flattens() -> None:
    logits = logits_from_probs([0.6, 0.4])
    cold = draw(SamplingConfig(temperature=0.2, seed=8), logits, 2000)
    hot = draw(SamplingConfig(temperature=5.0, seed=8), logits, 2000)
    assert cold[0] / 2000 > 0.85  # 0.6^5 / (0.6^5 + 0.4^5) = 0.88
    assert 0.45 < hot[0] / 2000 < 0.58  # 0.6^0.2 / (...) = 0.52


def test_repetition_penalty_lowers_a_repeated_token() -> None:
    logits = torch.zeros(4, dtype=torch.float32)
    logits[:2] = 1.0
    history = torch.tensor([0, 0, 0], dtype=torch.int64)
    plain = draw(SamplingConfig(top_k=2, seed=6), logits, 2000, history)
    penalised = draw(SamplingConfig(top_k=2, repetition_penalty=2.0, seed=6), logits, 2000, history)
    assert 0.45 < plain[0] / 2000 < 0.55
    # exp(0.5) / (exp(0.5) + exp(1)) = 0.38
    assert 0.33 < penalised[0] / 2000 < 0.43


@pytest.mark.parametrize(
    ("logits", "history", "penalty", "expected"),
    [
        ([2.0, 1.5], [0], 2.0, 1),  # positive logit divided: 1.0 < 1.5
        ([-1.0, -1.5], [0], 2.0, 1),  # negative logit multiplied: -2.0 < -1.5
        ([1.5, 2.0], [0], 0.5, 0),  # penalty < 1 encourages: 3.0 > 2.0
        ([2.0, 0.9], [0, 0, 0], 2.0, 0),  # a set: repeats do not compound (1.0 > 0.9)
        ([2.0, 1.5], [], 2.0, 0),  # no history, no penalty
    ],
)
def test_repetition_penalty_math(
    logits: list[float], history: list[int], penalty: float, expected: int
) -> None:
    sampler = Sampler(SamplingConfig(temperature=0.0, repetition_penalty=penalty))
    result = sampler(torch.tensor(logits), torch.tensor(history, dtype=torch.int64))
    assert result == expected


def test_repetition_penalty_comes_before_top_k() -> None:
    """The penalty changes which tokens survive top-k (penalties first, as in TensorRT-LLM)."""
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    history = torch.tensor([0, 1], dtype=torch.int64)
    counts = draw(SamplingConfig(top_k=2, repetition_penalty=4.0, seed=2), logits, 300, history)
    assert set(counts) == {0, 2}  # 3/4 = 0.75 and 1.0 survive; 2/4 = 0.5 does not


# --- presence and frequency penalties (TensorRT-LLM penaltyKernels.cu) ------------------------


@pytest.mark.parametrize(
    ("presence", "frequency", "expected"),
    [
        # logits [1, 1, 1, 1], history: token 0 three times, token 1 once, tokens 2-3 never.
        (0.5, 0.0, [0.5, 0.5, 1.0, 1.0]),  # presence: once, whatever the count
        (0.0, 0.5, [-0.5, 0.5, 1.0, 1.0]),  # frequency: per occurrence (3 x 0.5, 1 x 0.5)
        (0.5, 0.5, [-1.0, 0.0, 1.0, 1.0]),  # both add up
        (-1.0, 0.0, [2.0, 2.0, 1.0, 1.0]),  # negative: encourages repeating
        (0.0, -1.0, [4.0, 2.0, 1.0, 1.0]),
    ],
)
def test_additive_penalties_math(presence: float, frequency: float, expected: list[float]) -> None:
    logits = torch.ones(4, dtype=torch.float32)
    history = torch.tensor([0, 1, 0, 0], dtype=torch.int64)
    config = SamplingConfig(temperature=0.0, presence_penalty=presence, frequency_penalty=frequency)
    token, log_prob = Sampler(config).choose(logits, history, with_log_prob=True)
    want = torch.tensor(expected)
    assert token == int(torch.argmax(want))
    assert log_prob == pytest.approx(float(torch.log_softmax(want, dim=-1).max()), abs=1e-6)


def test_presence_and_frequency_differ_on_a_repeated_token() -> None:
    """Token 0 seen 4 times, token 1 once: presence 1.0 leaves them tied, frequency 1.0
    does not (4 against 1), so greedy picks differently."""
    logits = torch.tensor([5.0, 5.0, 0.0])
    history = torch.tensor([0, 0, 0, 0, 1], dtype=torch.int64)
    presence = Sampler(SamplingConfig(temperature=0.0, presence_penalty=1.0))
    frequency = Sampler(SamplingConfig(temperature=0.0, frequency_penalty=1.0))
    # Tied logits: argmax takes the first; frequency moves token 0 below token 1.
    assert presence(logits, history) == 0
    assert frequency(logits, history) == 1
    # And neither is the repetition penalty (multiplicative: 5 / 2 for both seen tokens).
    repetition = Sampler(SamplingConfig(temperature=0.0, repetition_penalty=2.0))
    assert repetition(logits, history) == 0


def test_prompt_tokens_count_for_the_penalties() -> None:
    # TensorRT-LLM: "The tokens of input prompt are included" (gpt-runtime.md). The engine
    # cannot tell prompt from output in previous_ids: every id in it counts.
    logits = torch.tensor([2.0, 1.9])
    history = torch.tensor([0], dtype=torch.int64)  # e.g. the prompt's last token
    sampler = Sampler(SamplingConfig(temperature=0.0, presence_penalty=0.2))
    assert sampler(logits, history) == 1
    assert sampler(logits, NO_HISTORY) == 0


def test_additive_penalties_come_after_temperature() -> None:
    """TensorRT-LLM scales by 1 / temperature first, then subtracts: logit / T - p."""
    logits = torch.tensor([2.0, 0.0])
    history = torch.tensor([0], dtype=torch.int64)
    config = SamplingConfig(temperature=0.5, presence_penalty=1.0, seed=1)
    token, log_prob = Sampler(config).choose(logits, history, with_log_prob=True)
    after = torch.log_softmax(torch.tensor([2.0 / 0.5 - 1.0, 0.0]), dim=-1)  # from [3, 0]
    before = torch.log_softmax(torch.tensor([(2.0 - 1.0) / 0.5, 0.0]), dim=-1)  # from [2, 0]
    assert log_prob == pytest.approx(float(after[token]), abs=1e-6)
    assert log_prob != pytest.approx(float(before[token]), abs=1e-3)


def test_frequency_penalty_comes_before_top_k() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    history = torch.tensor([0, 0, 1], dtype=torch.int64)  # 3 - 2 = 1.0, 2 - 1 = 1.0
    counts = draw(SamplingConfig(top_k=3, frequency_penalty=1.0, seed=2), logits, 300, history)
    assert set(counts) == {0, 1, 2}  # token 3 (0.0) is the one cut
    counts = draw(SamplingConfig(top_k=2, frequency_penalty=1.5, seed=2), logits, 300, history)
    assert set(counts) == {1, 2}  # 3 - 3 = 0.0 and 2 - 1.5 = 0.5 against 1.0


def test_penalties_do_not_modify_callers_logits() -> None:
    logits = random_logits(1)
    before = logits.clone()
    history = torch.arange(50, dtype=torch.int64).repeat(2)
    config = SamplingConfig(temperature=0.0, presence_penalty=0.7, frequency_penalty=-0.3)
    Sampler(config)(logits, history)
    assert torch.equal(logits, before)


@pytest.mark.parametrize(
    ("field", "value"),
    [("presence_penalty", -3e38), ("frequency_penalty", -3e38)],
)
def test_additive_penalty_that_overflows_the_logits_is_refused(field: str, value: float) -> None:
    logits = torch.tensor([3e38, 1.0])  # + 3e38 (or + 2 x 3e38) is beyond float32
    history = torch.tensor([0, 0], dtype=torch.int64)
    with pytest.raises(Refusal) as info:
        Sampler(SamplingConfig(temperature=0.0, **{field: value}))(logits, history)
    assert info.value.tensor == field


def test_additive_penalty_that_masks_every_token_is_refused() -> None:
    logits = torch.tensor([-3e38, -3e38])
    history = torch.tensor([0, 1], dtype=torch.int64)
    with pytest.raises(Refusal, match="presence_penalty"):
        Sampler(SamplingConfig(temperature=0.0, presence_penalty=3e38))(logits, history)


# --- log-probabilities of the chosen tokens -----------------------------------------------------


def test_greedy_log_prob_is_the_log_softmax_maximum() -> None:
    sampler = Sampler(SamplingConfig(top_k=1, seed=1))
    for step in range(10):
        logits = random_logits(step)
        token, log_prob = sampler.choose(logits, NO_HISTORY, with_log_prob=True)
        log_softmax = torch.log_softmax(logits, dim=-1)
        assert token == int(torch.argmax(logits))
        assert log_prob == pytest.approx(float(log_softmax.max()), abs=1e-6)
        assert log_prob <= 0.0


def test_greedy_log_prob_is_of_the_penalised_logits() -> None:
    logits = random_logits(3)
    history = torch.topk(logits, 5).indices  # the five best tokens, all penalised
    config = SamplingConfig(temperature=0.0, frequency_penalty=2.0, repetition_penalty=1.5)
    token, log_prob = Sampler(config).choose(logits, history, with_log_prob=True)
    processed = logits.clone()
    processed[history] = torch.where(
        processed[history] > 0, processed[history] / 1.5, processed[history] * 1.5
    )
    processed[history] -= 2.0
    assert token == int(torch.argmax(processed))
    assert token not in history.tolist()
    assert log_prob == pytest.approx(float(torch.log_softmax(processed, dim=-1).max()), abs=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(temperature=0.7, seed=5),
        SamplingConfig(temperature=1.3, top_k=40, seed=5),
        SamplingConfig(temperature=0.9, top_p=0.8, seed=5),
        SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, presence_penalty=0.4, seed=5),
    ],
)
def test_sampled_log_prob_is_of_the_scaled_full_vocabulary(config: SamplingConfig) -> None:
    """TensorRT-LLM's unnormalised value: log P(token | vocab) after temperature and penalties,
    not renormalised over the top-k / top-p survivors."""
    history = torch.arange(10, dtype=torch.int64)
    sampler = Sampler(config)
    for step in range(10):
        logits = random_logits(100 + step)
        token, log_prob = sampler.choose(logits, history, with_log_prob=True)
        processed = logits / config.temperature
        processed[history] -= config.presence_penalty
        assert log_prob == pytest.approx(float(torch.log_softmax(processed, -1)[token]), abs=1e-5)


def test_log_prob_does_not_change_the_tokens() -> None:
    config = SamplingConfig(temperature=0.9, top_k=50, top_p=0.95, frequency_penalty=0.5, seed=9)
    history = torch.arange(30, dtype=torch.int64)
    plain, with_log_prob = Sampler(config), Sampler(config)
    for step in range(20):
        logits = random_logits(step)
        token, log_prob = with_log_prob.choose(logits, history, with_log_prob=True)
        assert plain.choose(logits, history) == (token, None)
        assert log_prob is not None


# --- numbers that cannot be sampled ------------------------------------------------------------


def test_temperature_that_overflows_the_logits_is_refused() -> None:
    logits = torch.tensor([1e34, 0.0, -1e34])  # finite; / 1e-5 is beyond float32
    with pytest.raises(Refusal) as info:
        Sampler(SamplingConfig(temperature=1e-5, seed=1))(logits, NO_HISTORY)
    assert info.value.tensor == "temperature"


def test_repetition_penalty_that_overflows_the_logits_is_refused() -> None:
    logits = torch.tensor([3e38, 1.0])
    history = torch.tensor([0], dtype=torch.int64)
    with pytest.raises(Refusal) as info:
        Sampler(SamplingConfig(repetition_penalty=0.01, seed=1))(logits, history)
    assert info.value.tensor == "repetition_penalty"


def test_repetition_penalty_that_masks_every_token_is_refused() -> None:
    """Every token seen and negative: a huge penalty sends them all to -inf (softmax NaN)."""
    logits = torch.tensor([-2.0, -3.0])  # x 3e38: both beyond float32
    history = torch.tensor([0, 1], dtype=torch.int64)
    with pytest.raises(Refusal, match="repetition_penalty"):
        Sampler(SamplingConfig(repetition_penalty=3e38, temperature=0.0))(logits, history)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_logits_from_the_model_are_an_engine_fault(bad: float) -> None:
    logits = torch.tensor([1.0, bad, 0.0])
    with pytest.raises(FloatingPointError):  # INTERNAL, not the caller's INVALID_ARGUMENT
        Sampler(SamplingConfig(seed=1))(logits, NO_HISTORY)


def test_masked_logits_are_fine() -> None:
    logits = torch.tensor([-math.inf, 0.5, -math.inf])  # a model may mask tokens with -inf
    assert set(draw(SamplingConfig(seed=2), logits, 50)) == {1}


# The extremes of every numeric field, as a caller (or Triton's FP32 / INT32 / UINT64 tensors)
# can send them: denormals, ±inf, NaN, -0.0, the float32 and integer limits.
FLOAT_EXTREMES = [
    0.0, -0.0, 5e-324, 1e-45, 1.17549435e-38, 9.99e-6, 1e-5, 0.0099, 0.01, 0.5, 1.0, 2.0,
    3.4028235e38, 1.7976931348623157e308, math.inf, -math.inf, math.nan, -1e-45, -1.0,
]  # fmt: skip
INT_EXTREMES = [0, -1, 1, 2, 2**31 - 1, -(2**31), 2**63 - 1, 2**64 - 1, -(2**63)]
floats = st.sampled_from(FLOAT_EXTREMES) | st.floats(width=32)
ints = st.sampled_from(INT_EXTREMES) | st.integers(-(2**31), 2**31 - 1)
# Logits a model can produce: finite float32 (extremes included) or -inf (a masked token).
logit = st.sampled_from([0.0, -0.0, 1e-45, 3.4028235e38, -3.4028235e38, -math.inf]) | st.floats(
    width=32, allow_nan=False, allow_infinity=False
)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    temperature=floats,
    top_k=ints,
    top_p=floats,
    penalty=floats,
    seed=st.none() | st.sampled_from([*INT_EXTREMES, 2**64]),
    additive=st.tuples(st.just(0.0) | floats, st.just(0.0) | floats),
    logits=st.lists(logit, min_size=1, max_size=64),
    data=st.data(),
)
def test_sampler_refuses_or_samples_never_fails(
    temperature: float,
    top_k: int,
    top_p: float,
    penalty: float,
    seed: int | None,
    additive: tuple[float, float],
    logits: list[float],
    data: st.DataObject,
) -> None:
    """Whatever the numbers: a Refusal naming a tensor, or a token id — never torch's
    "probability tensor contains either inf, nan or element < 0" or any other error."""
    history = data.draw(st.lists(st.integers(0, len(logits) - 1), max_size=8))
    config = SamplingConfig(temperature, top_k, top_p, penalty, seed, *additive)
    try:
        sampler = Sampler(config)
    except Refusal as refusal:
        assert refusal.tensor in TENSORS
        return
    tensor = torch.tensor(logits, dtype=torch.float32)
    if not math.isfinite(float(tensor.max())):  # every token masked: the model's fault
        with pytest.raises(FloatingPointError):
            sampler(tensor, torch.tensor(history, dtype=torch.int64))
        return
    try:
        token, log_prob = sampler.choose(
            tensor, torch.tensor(history, dtype=torch.int64), with_log_prob=True
        )
    except Refusal as refusal:
        assert refusal.tensor in TENSORS - {"runtime_top_k", "runtime_top_p", "seed"}
        return
    assert 0 <= token < len(logits)
    assert logits[token] != -math.inf  # a masked token has probability 0
    assert log_prob is not None
    assert -math.inf < log_prob <= 0.0
