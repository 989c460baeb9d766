"""CausalLMRunner with the real SmolLM2 model: stopping rules, cancellation and seeding.

Each generated token costs one forward pass (~0.1 s on CPU), so requests stay a few tokens long.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from autoglm.triton_models.cpu_engine.request import EngineRequest
from autoglm.triton_models.cpu_engine.runner import CausalLMRunner
from autoglm.triton_models.cpu_engine.sampling import SamplingConfig

PROMPT = "The capital of France is"
GREEDY = SamplingConfig(top_k=1)


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> CausalLMRunner:
    return CausalLMRunner(model_dir)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    return tuple(tokenizer.encode(PROMPT).ids)


def request(
    prompt_ids: tuple[int, ...],
    max_new_tokens: int,
    *,
    end_id: int | None = None,
    sampling: SamplingConfig = GREEDY,
    stop_words: tuple[tuple[int, ...], ...] = (),
    return_log_probs: bool = False,
) -> EngineRequest:
    return EngineRequest(
        input_ids=prompt_ids,
        max_new_tokens=max_new_tokens,
        end_id=end_id,
        streaming=True,
        exclude_input_in_output=True,
        sampling=sampling,
        stop_words=stop_words,
        return_log_probs=return_log_probs,
    )


def never() -> bool:
    return False


def run(
    runner: CausalLMRunner, req: EngineRequest, is_cancelled: Callable[[], bool] = never
) -> list[int]:
    return list(runner.generate(req, is_cancelled=is_cancelled))


@pytest.fixture(scope="module")
def greedy(runner: CausalLMRunner, prompt_ids: tuple[int, ...]) -> list[int]:
    """The greedy continuation (4 tokens, no end_id): the reference for the stopping tests."""
    tokens = run(runner, request(prompt_ids, 4))
    assert len(tokens) == 4
    # The stopping tests below need distinct first tokens to be unambiguous.
    assert tokens[0] not in tokens[1:3]
    return tokens


def test_vocab_size(runner: CausalLMRunner) -> None:
    assert runner.vocab_size == 49152


def test_greedy_knows_paris(greedy: list[int], tokenizer: Tokenizer) -> None:
    assert "Paris" in tokenizer.decode(greedy)
    assert all(isinstance(t, int) and 0 <= t < 49152 for t in greedy)


def test_greedy_is_deterministic(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int]
) -> None:
    # temperature 0 is greedy too, and a shorter request is a prefix of a longer one.
    assert (
        run(runner, request(prompt_ids, 3, sampling=SamplingConfig(temperature=0.0)))
        == (greedy[:3])
    )


@pytest.mark.parametrize("max_new_tokens", [1, 2])
def test_max_new_tokens_is_respected(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int], max_new_tokens: int
) -> None:
    assert run(runner, request(prompt_ids, max_new_tokens)) == greedy[:max_new_tokens]


def test_end_id_as_first_token_yields_nothing(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int]
) -> None:
    assert run(runner, request(prompt_ids, 5, end_id=greedy[0])) == []


def test_end_id_later_stops_before_it(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int]
) -> None:
    assert run(runner, request(prompt_ids, 5, end_id=greedy[1])) == greedy[:1]


def test_single_token_stop_word_is_yielded_then_stops(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int]
) -> None:
    stop = (greedy[1],)
    assert run(runner, request(prompt_ids, 6, stop_words=(stop,))) == greedy[:2]


def test_multi_token_stop_word_stops_right_after_it_completes(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int]
) -> None:
    # A word that never completes does not stop generation early.
    never_completes = (greedy[0], 0)
    words = (never_completes, (greedy[1], greedy[2]))
    assert run(runner, request(prompt_ids, 6, stop_words=words)) == greedy[:3]


def test_stop_word_is_not_matched_against_the_prompt(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int]
) -> None:
    # The prompt's last token + the first generated one form the word; only generated ids count.
    words = ((prompt_ids[-1], greedy[0]),)
    assert run(runner, request(prompt_ids, 2, stop_words=words)) == greedy[:2]


def test_cancelled_after_three_tokens_yields_exactly_three(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int]
) -> None:
    yielded: list[int] = []

    def cancelled() -> bool:
        return len(yielded) >= 3

    for token in runner.generate(request(prompt_ids, 6), is_cancelled=cancelled):
        yielded.append(token)
    assert yielded == greedy[:3]


def test_cancelled_before_start_yields_nothing(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...]
) -> None:
    assert run(runner, request(prompt_ids, 5), is_cancelled=lambda: True) == []


def test_same_seed_same_tokens(runner: CausalLMRunner, prompt_ids: tuple[int, ...]) -> None:
    sampling = SamplingConfig(temperature=1.0, seed=1234)
    first = run(runner, request(prompt_ids, 4, sampling=sampling))
    assert len(first) == 4
    assert run(runner, request(prompt_ids, 4, sampling=sampling)) == first


def test_different_seeds_differ(runner: CausalLMRunner, prompt_ids: tuple[int, ...]) -> None:
    # Full-vocabulary sampling at temperature 1: two 4-token draws are (very likely) different;
    # with these fixed seeds the outcome is deterministic.
    first, second = (
        run(runner, request(prompt_ids, 4, sampling=SamplingConfig(seed=seed))) for seed in (1, 2)
    )
    assert first != second


def test_greedy_log_probs_are_the_model_s_own(
    runner: CausalLMRunner, prompt_ids: tuple[int, ...], greedy: list[int]
) -> None:
    """Each step's value is the log-softmax maximum of the model's logits at that position
    (one full forward pass over prompt + output checks the KV-cached steps)."""
    steps = list(runner.steps(request(prompt_ids, 3, return_log_probs=True), is_cancelled=never))
    assert [token for token, _ in steps] == greedy[:3]
    with torch.inference_mode():
        ids = torch.tensor([[*prompt_ids, *greedy[:2]]])
        logits = runner.model(input_ids=ids).logits[0, len(prompt_ids) - 1 :].float()
    expected = torch.log_softmax(logits, dim=-1).max(dim=-1).values.tolist()  # [3]
    assert [lp for _, lp in steps] == pytest.approx(expected, abs=1e-4)
    assert all(lp is not None and lp <= 0.0 for _, lp in steps)


def test_no_log_probs_unless_asked(runner: CausalLMRunner, prompt_ids: tuple[int, ...]) -> None:
    assert [lp for _, lp in runner.steps(request(prompt_ids, 1), is_cancelled=never)] == [None]
