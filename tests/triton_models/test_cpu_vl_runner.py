"""VisionLanguageRunner with the tiny random-weight GLM-4.1V: images reach the model, counts,
stop rules, cancellation, concurrency and refusals.

The weights are random, so the answers are gibberish; what matters is that they depend on the
image (greedy decoding of the same prompt gives different tokens for different images) and on
nothing else (the same image gives the same tokens, alone or beside another request).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer

from autoglm.triton_models.cpu_engine.sampling import SamplingConfig
from autoglm.triton_models.cpu_vl.runner import VisionLanguageRunner, VlGeneration, VlStep
from autoglm.triton_models.refusal import Refusal

GREEDY = SamplingConfig(temperature=0.0)
PLACEHOLDER = "<|begin_of_image|><|image|><|end_of_image|>"
# The agent's call shape, rendered by GLM-4.1V's chat template (string content: the placeholder
# before the text, joined by a newline, as vLLM's --chat-template-content-format string does).
PROMPT = (
    "[gMASK]<sop><|system|>\nYou are a phone agent. Answer with do(action=...)."
    f"<|user|>\n{PLACEHOLDER}\nOpen the settings app<|assistant|>\n"
)
# 1080×2400 at the tiny model's budget (1,000,000, compared with 2·h·w): 1036×448 pixels,
# 74×32 patches, 37×16 = 592 image tokens (smart_resize, transformers glm4v).
SCREENSHOT_TOKENS = 592


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def noise() -> bytes:
    rng = np.random.default_rng(7)
    return png(rng.integers(0, 256, (2400, 1080, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def flat() -> bytes:
    return png(np.full((2400, 1080, 3), (30, 120, 200), dtype=np.uint8))


@pytest.fixture(scope="module")
def runner(vlm_dir: Path) -> VisionLanguageRunner:
    return VisionLanguageRunner(vlm_dir)


@pytest.fixture(scope="module")
def tokenizer(vlm_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(vlm_dir / "tokenizer.json"))


def never() -> bool:
    return False


def generate(
    runner: VisionLanguageRunner,
    images: tuple[bytes, ...],
    *,
    prompt: str = PROMPT,
    max_tokens: int = 12,
    is_cancelled: Callable[[], bool] = never,
    **options,
) -> list[VlStep]:
    request = VlGeneration(
        prompt=prompt, images=images, max_tokens=max_tokens, sampling=GREEDY, **options
    )
    return list(runner.steps(request, is_cancelled=is_cancelled))


def tokens(steps: list[VlStep]) -> list[int]:
    return [t for s in steps for t in s.token_ids]


def text(steps: list[VlStep]) -> str:
    return "".join(s.text for s in steps)


def test_two_different_images_give_different_greedy_outputs(
    runner: VisionLanguageRunner, noise: bytes, flat: bytes
) -> None:
    with_noise, with_flat = generate(runner, (noise,)), generate(runner, (flat,))
    assert tokens(with_noise) != tokens(with_flat)
    assert text(with_noise) != text(with_flat)


def test_the_same_image_gives_the_same_output(runner: VisionLanguageRunner, noise: bytes) -> None:
    assert tokens(generate(runner, (noise,))) == tokens(generate(runner, (noise,)))


def test_input_tokens_count_the_image_tokens(
    runner: VisionLanguageRunner, tokenizer: Tokenizer, noise: bytes
) -> None:
    text_tokens = len(tokenizer.encode(PROMPT, add_special_tokens=False).ids) - 1  # - <|image|>
    steps = generate(runner, (noise,), max_tokens=3)
    assert {s.num_input_tokens for s in steps} == {text_tokens + SCREENSHOT_TOKENS}


def test_the_tokenizer_adds_no_special_tokens_by_default(tokenizer: Tokenizer) -> None:
    """vLLM encodes a raw prompt with the tokenizer's default; the runner adds none: the same."""
    assert tokenizer.encode(PROMPT).ids == tokenizer.encode(PROMPT, add_special_tokens=False).ids


def test_expansion_equals_the_processors_text_replacement(
    runner: VisionLanguageRunner, tokenizer: Tokenizer, noise: bytes, flat: bytes
) -> None:
    """Glm4vProcessor replaces the i-th `<|image|>` in the *text* by as many copies as image i
    has tokens, then tokenizes; expanding the ids must give the same sequence."""
    prompt = f"{PLACEHOLDER}a{PLACEHOLDER}b"
    request = VlGeneration(prompt=prompt, images=(noise, flat), max_tokens=1, sampling=GREEDY)
    layout, _ = runner._prepare(request)
    expanded = prompt.replace("<|image|>", "<|image|>" * SCREENSHOT_TOKENS)
    assert layout.input_ids == tuple(tokenizer.encode(expanded, add_special_tokens=False).ids)


def test_max_tokens_ends_with_length(runner: VisionLanguageRunner, flat: bytes) -> None:
    steps = generate(runner, (flat,), max_tokens=5)
    assert len(steps) == 5
    assert [s.finish_reason for s in steps] == [None] * 4 + ["length"]
    assert all(len(s.token_ids) == 1 for s in steps)


def test_a_stop_token_id_ends_with_stop_counted_but_not_in_the_text(
    runner: VisionLanguageRunner, flat: bytes
) -> None:
    free = generate(runner, (flat,), max_tokens=6)
    stop_at = tokens(free)[2]
    index = tokens(free).index(stop_at)
    steps = generate(runner, (flat,), max_tokens=6, stop_token_ids=(stop_at,))
    assert tokens(steps) == tokens(free)[: index + 1]
    assert steps[-1].finish_reason == "stop"
    assert steps[-1].text == ""
    assert text(steps) == "".join(s.text for s in free[:index])


def test_every_generation_config_end_id_stops(
    runner: VisionLanguageRunner, vlm_dir: Path, flat: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = json.loads((vlm_dir / "generation_config.json").read_text())["eos_token_id"]
    assert len(listed) >= 2
    assert set(listed) <= runner.end_ids
    first = tokens(generate(runner, (flat,), max_tokens=1))[0]
    monkeypatch.setattr(runner, "end_ids", runner.end_ids | {first})  # as if it were an eos
    steps = generate(runner, (flat,), max_tokens=6)
    assert [(s.token_ids, s.text, s.finish_reason) for s in steps] == [((first,), "", "stop")]


def test_a_stop_string_ends_with_stop_and_the_text_before_it(
    runner: VisionLanguageRunner, noise: bytes
) -> None:
    full = text(generate(runner, (noise,), max_tokens=8))
    stop = full[3:7]
    assert stop.strip(), full
    steps = generate(runner, (noise,), max_tokens=8, stop=(stop,))
    assert steps[-1].finish_reason == "stop"
    assert text(steps) == full[: full.index(stop)]
    assert len(steps) < 8


def test_the_context_length_ends_with_length(
    runner: VisionLanguageRunner, flat: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt_len = generate(runner, (flat,), max_tokens=1)[0].num_input_tokens
    monkeypatch.setattr(runner, "max_model_len", prompt_len + 3)
    steps = generate(runner, (flat,), max_tokens=10)
    assert len(steps) == 3
    assert steps[-1].finish_reason == "length"


def test_logprobs_are_the_raw_log_softmax_of_each_chosen_token(
    runner: VisionLanguageRunner, flat: bytes
) -> None:
    steps = generate(runner, (flat,), max_tokens=4, logprobs=True)
    values = [lp for s in steps for lp in s.logprobs]
    assert len(values) == 4
    assert all(v <= 0.0 for v in values)
    assert generate(runner, (flat,), max_tokens=2)[0].logprobs == ()


def test_cancellation_between_steps(runner: VisionLanguageRunner, flat: bytes) -> None:
    calls = 0

    def after_three_tokens() -> bool:
        nonlocal calls
        calls += 1  # once before the prefill, then after each token
        return calls > 3

    steps = generate(runner, (flat,), max_tokens=20, is_cancelled=after_three_tokens)
    assert len(steps) == 3
    assert steps[-1].finish_reason is None
    assert generate(runner, (flat,), is_cancelled=lambda: True) == []


def test_concurrent_generations_equal_their_solo_runs(
    runner: VisionLanguageRunner, noise: bytes, flat: bytes
) -> None:
    other_prompt = PROMPT.replace("settings", "camera") + "<think>"
    solo = {
        "noise": tokens(generate(runner, (noise,), max_tokens=16)),
        "flat": tokens(generate(runner, (flat,), prompt=other_prompt, max_tokens=16)),
    }
    assert solo["noise"] != solo["flat"]
    # Both requests wait for each other at every step (is_cancelled is called before the
    # prefill and between tokens), so their prefills and decode steps interleave for sure.
    barrier = threading.Barrier(2)

    def in_lockstep() -> bool:
        barrier.wait(timeout=30)  # both make the same number of calls (max_tokens each)
        return False

    with ThreadPoolExecutor(2) as pool:
        jobs = {
            "noise": pool.submit(
                generate, runner, (noise,), max_tokens=16, is_cancelled=in_lockstep
            ),
            "flat": pool.submit(
                generate,
                runner,
                (flat,),
                prompt=other_prompt,
                max_tokens=16,
                is_cancelled=in_lockstep,
            ),
        }
        together = {name: tokens(job.result(timeout=60)) for name, job in jobs.items()}
    assert together == solo
    assert runner.model.model.rope_deltas is None  # the model's shared state stays unused


def test_a_text_only_prompt_needs_no_image(runner: VisionLanguageRunner) -> None:
    steps = generate(runner, (), prompt="[gMASK]<sop><|user|>\nhello<|assistant|>\n")
    assert len(steps) == 12
    assert steps[0].num_input_tokens < 20


@pytest.mark.parametrize(
    ("prompt", "images"),
    [
        (PROMPT, 0),  # a placeholder without its image
        (PROMPT, 2),  # an image without a placeholder
        ("no placeholder at all", 1),
    ],
)
def test_a_placeholder_image_count_mismatch_is_refused(
    runner: VisionLanguageRunner, flat: bytes, prompt: str, images: int
) -> None:
    with pytest.raises(Refusal, match="placeholders") as err:
        generate(runner, (flat,) * images, prompt=prompt)
    assert err.value.tensor == "image"


def test_bytes_that_are_not_an_image_are_refused(runner: VisionLanguageRunner) -> None:
    with pytest.raises(Refusal, match="image 0") as err:
        generate(runner, (b"not a png",))
    assert err.value.tensor == "image"


def test_a_prompt_that_fills_the_context_is_refused(runner: VisionLanguageRunner) -> None:
    with pytest.raises(Refusal, match="context") as err:
        generate(runner, (), prompt="word " * runner.max_model_len)
    assert err.value.tensor == "text_input"


def test_empty_prompt_and_zero_max_tokens_are_refused(runner: VisionLanguageRunner) -> None:
    with pytest.raises(Refusal, match="empty"):
        generate(runner, (), prompt="")
    with pytest.raises(Refusal, match="max_tokens"):
        generate(runner, (), prompt="hi", max_tokens=0)


def test_penalties_change_a_repetitive_greedy_answer(
    runner: VisionLanguageRunner, noise: bytes
) -> None:
    plain = tokens(generate(runner, (noise,), max_tokens=6))
    assert len(set(plain)) < len(plain)  # random weights repeat themselves
    request = VlGeneration(
        prompt=PROMPT,
        images=(noise,),
        max_tokens=6,
        sampling=SamplingConfig(temperature=0.0, presence_penalty=100.0),
    )
    penalised = tokens(runner.steps(request, is_cancelled=never))
    assert len(set(penalised)) == len(penalised)  # the output's own tokens only are penalised


def test_prompt_repetition_penalty_scope_covers_the_prompt() -> None:
    from autoglm.triton_models.cpu_vl.runner import _repetition_penalty

    logits = torch.tensor([2.0, -2.0, 2.0, 1.0])
    out = _repetition_penalty(logits, torch.tensor([0, 1]), torch.tensor([3]), 2.0)
    assert out.tolist() == [1.0, -4.0, 2.0, 0.5]
    assert logits.tolist() == [2.0, -2.0, 2.0, 1.0]
