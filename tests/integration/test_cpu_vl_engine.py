"""The CPU engine for vision-language models in the real Triton, called as the façade calls
Triton's vLLM backend (vllm_contract.py), with tritonclient's gRPC stream and no façade.

The model is the tiny random-weight GLM-4.1V (build_engine/tiny_vlm.py): its text is gibberish,
but images reach it, its image-token counts are GLM-4.1V's, and greedy answers are
deterministic. What a vLLM backend does, this engine must do on the wire: one response per step
with its new text, the last one final *with* data (seen here: Triton flags it
`triton_final_response` and sends no empty response after it, with or without
`triton_enable_empty_final_response` — unlike the text engine, whose data responses are followed
by an empty final one), `num_input_tokens` as a 0-d tensor, refusals naming the tensor.
"""

from __future__ import annotations

import base64
import io
import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.repository import CpuVlConfig, render_cpu_vl_model

from .conftest import engine_metric

pytestmark = pytest.mark.integration

VLM = "glm41v-tiny-cpu"
PLACEHOLDER = "<|begin_of_image|><|image|><|end_of_image|>"
ASK = "<|user|>\n{images}Describe the screen.<|assistant|>\n"
# A 224×224 image keeps its size under GLM-4.1V's resize rule (a multiple of 28, and
# 2·224·224 pixels lie between the tiny processor's min 12,544 and max 1,000,000), so it is
# (224/28)² = 64 image tokens: one per 2×2 merge of 14-pixel patches (transformers smart_resize).
SIDE = 224
IMAGE_TOKENS = 64
RESPONSE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, vlm_dir: Path) -> Iterator[TritonProcess]:
    """Triton with the CPU vision-language engine alone, on plaintext loopback."""
    repo = tmp_path_factory.mktemp("triton-vl") / "model_repository"
    render_cpu_vl_model(repo, CpuVlConfig(model_name=VLM, hf_model_dir=vlm_dir, max_concurrency=2))
    proc = TritonProcess(TritonOptions(model_repository=repo, models=(VLM,), exit_timeout_s=5))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tokenizer(vlm_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(vlm_dir / "tokenizer.json"))


def png(seed: int, side: int = SIDE) -> bytes:
    """A noise image: two seeds give images the model cannot confuse."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def prompt(images: int) -> str:
    return ASK.format(images=PLACEHOLDER * images)


def _input(name: str, values: list[Any]) -> grpcclient.InferInput:
    spec = vc.INPUTS_BY_NAME[name]
    arr = np.array(values, dtype=spec.numpy_dtype)  # [n]: no batch dimension
    tensor = grpcclient.InferInput(name, list(arr.shape), spec.wire_dtype)
    tensor.set_data_from_numpy(arr)
    return tensor


def inputs(
    text: str,
    images: tuple[bytes, ...] = (),
    *,
    stream: bool = True,
    exclude_input: bool | None = True,
    image_texts: list[bytes] | None = None,
    flags: tuple[str, ...] = (
        "return_finish_reason",
        "return_num_input_tokens",
        "return_num_output_tokens",
    ),
    **sampling: Any,
) -> list[grpcclient.InferInput]:
    """The façade's request shape (server/engine/text_request.py), by default. `image_texts`:
    the `image` elements as they are, instead of the base64 of `images`."""
    params = {"max_tokens": 8, "temperature": 0.0, **sampling}
    out = [
        _input("text_input", [text.encode()]),
        _input("stream", [stream]),
        _input("sampling_parameters", [json.dumps(params).encode()]),
    ]
    if images or image_texts:
        out.append(_input("image", image_texts or [base64.b64encode(i) for i in images]))
    if exclude_input is not None:
        out.append(_input("exclude_input_in_output", [exclude_input]))
    out.extend(_input(flag, [True]) for flag in flags)
    return out


@dataclass
class Response:
    outputs: dict[str, np.ndarray]
    shapes: dict[str, list[int]]
    final: bool

    def text(self) -> str:
        return self.outputs["text_output"][0].decode()

    def finish_reason(self) -> str:
        return self.outputs["finish_reason"][0].decode()


class Stream:
    """One tritonclient gRPC stream (ModelStreamInfer) with its responses on a queue."""

    def __init__(self, triton: TritonProcess) -> None:
        self.client = grpcclient.InferenceServerClient(triton.grpc_target)
        self.queue: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.queue.put((result, error)))

    def send(self, request: list[grpcclient.InferInput], *, empty_final: bool = True) -> None:
        # The façade sets triton_enable_empty_final_response (server/engine/client.py).
        self.client.async_stream_infer(VLM, request, enable_empty_final_response=empty_final)

    def next(self) -> Response:
        result, error = self.queue.get(timeout=RESPONSE_TIMEOUT_S)
        if error is not None:
            raise error
        response = result.get_response()
        params = response.parameters
        final = "triton_final_response" in params and params["triton_final_response"].bool_param
        return Response(
            {o.name: result.as_numpy(o.name) for o in response.outputs},
            {o.name: list(o.shape) for o in response.outputs},
            final,
        )

    def until_finished(self) -> list[Response]:
        """Responses up to the one with a finish reason (which the vLLM backend flags final)."""
        responses = [self.next()]
        while responses[-1].finish_reason() == vc.FINISH_NONE:
            responses.append(self.next())
        return responses

    def close(self, *, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()

    def nothing_more(self) -> bool:
        return self.queue.empty()


@pytest.fixture
def stream(triton: TritonProcess) -> Iterator[Stream]:
    s = Stream(triton)
    yield s
    s.close()


def generate(triton: TritonProcess, request: list[grpcclient.InferInput]) -> list[Response]:
    s = Stream(triton)
    try:
        s.send(request)
        return s.until_finished()
    finally:
        s.close()


def prompt_tokens(tokenizer: Tokenizer, text: str) -> int:
    # vLLM tokenizes a chat prompt without adding special tokens (runner.py).
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


# --- text and images ------------------------------------------------------------------------


def test_text_only_prompt_streams_text_with_counts(stream: Stream, tokenizer: Tokenizer) -> None:
    text = prompt(0)
    stream.send(inputs(text, max_tokens=8))
    responses = stream.until_finished()
    assert 1 <= len(responses) <= 8
    assert all(r.outputs["num_output_tokens"].tolist() == [1] for r in responses)
    assert all(
        int(r.outputs["num_input_tokens"]) == prompt_tokens(tokenizer, text) for r in responses
    )
    assert [r.finish_reason() for r in responses[:-1]] == [vc.FINISH_NONE] * (len(responses) - 1)
    last = responses[-1]
    assert last.finish_reason() in (vc.FINISH_LENGTH, vc.FINISH_STOP)
    if last.finish_reason() == vc.FINISH_LENGTH:
        assert len(responses) == 8
    assert "".join(r.text() for r in responses)  # the tiny model's gibberish, but text
    # The vLLM backend's shapes: num_input_tokens is np.asarray(int, uint32), 0-d.
    assert last.shapes == {
        "text_output": [1],
        "finish_reason": [1],
        "num_input_tokens": [],
        "num_output_tokens": [1],
    }


def test_the_last_response_is_final_with_data_and_nothing_follows(stream: Stream) -> None:
    stream.send(inputs(prompt(0), max_tokens=4))
    responses = stream.until_finished()
    assert [r.final for r in responses] == [False] * (len(responses) - 1) + [True]
    assert responses[-1].outputs["num_output_tokens"].tolist() == [1]
    # No empty final response after it, although the request asked for one: the engine's own
    # final response carries the data, as the vLLM backend's does. stop_stream drains the
    # stream (it waits for Triton to end it), so anything more would be on the queue now.
    stream.close()
    assert stream.nothing_more()


def test_without_the_empty_final_flag_the_same_responses(triton: TritonProcess) -> None:
    with_flag = generate(triton, inputs(prompt(0), max_tokens=4))
    s = Stream(triton)
    try:
        s.send(inputs(prompt(0), max_tokens=4), empty_final=False)
        without = s.until_finished()
    finally:
        s.close()
    assert s.nothing_more()
    assert [r.text() for r in without] == [r.text() for r in with_flag]
    assert without[-1].final  # Triton 2.51 marks a decoupled model's final response anyway


def test_one_image_counts_its_image_tokens(stream: Stream, tokenizer: Tokenizer) -> None:
    text = prompt(1)
    stream.send(inputs(text, (png(1),), max_tokens=4))
    responses = stream.until_finished()
    # The placeholder's <|image|> becomes the image's 64 tokens (image tokens count: vLLM's
    # len(prompt_token_ids) after expansion).
    expected = prompt_tokens(tokenizer, text) - 1 + IMAGE_TOKENS
    assert {int(r.outputs["num_input_tokens"]) for r in responses} == {expected}


def test_two_images_count_both(triton: TritonProcess, tokenizer: Tokenizer) -> None:
    text = prompt(2)
    responses = generate(triton, inputs(text, (png(1), png(2)), max_tokens=2))
    expected = prompt_tokens(tokenizer, text) - 2 + 2 * IMAGE_TOKENS
    assert int(responses[0].outputs["num_input_tokens"]) == expected


def test_different_images_give_different_greedy_answers(triton: TritonProcess) -> None:
    def answer(image: bytes) -> str:
        responses = generate(triton, inputs(prompt(1), (image,), max_tokens=12))
        return "".join(r.text() for r in responses)

    first, again, other = answer(png(1)), answer(png(1)), answer(png(2))
    assert first == again  # temperature 0 is deterministic
    assert first != other  # so a different answer comes from the image


def test_not_streamed_one_final_response_with_the_prompt(triton: TritonProcess) -> None:
    text = prompt(1)
    streamed = generate(triton, inputs(text, (png(3),), max_tokens=6))
    s = Stream(triton)
    try:
        s.send(inputs(text, (png(3),), stream=False, exclude_input=None, max_tokens=6))
        [whole] = s.until_finished()
    finally:
        s.close()
    assert s.nothing_more()
    assert whole.final
    # exclude_input_in_output absent and not streaming: the backend prepends the prompt.
    assert whole.text() == text + "".join(r.text() for r in streamed)
    assert whole.outputs["num_output_tokens"].tolist() == [len(streamed)]
    assert whole.finish_reason() == streamed[-1].finish_reason()


def test_logprobs_as_the_backend_sends_them(triton: TritonProcess) -> None:
    responses = generate(
        triton,
        inputs(
            prompt(0),
            max_tokens=4,
            logprobs=0,
            flags=("return_logprobs", "return_cumulative_logprob", "return_finish_reason"),
        ),
    )
    values = []
    for r in responses:
        [entry] = json.loads(r.outputs["logprobs"][0])  # one new token per response
        [(token_id, logprob)] = entry.items()
        assert int(token_id) >= 0
        assert set(logprob) == {"logprob", "rank", "decoded_token"}
        values.append(logprob["logprob"])
        assert r.outputs["cumulative_logprob"][0] == pytest.approx(sum(values), abs=1e-4)
    assert all(v <= 0 for v in values)


# --- cancellation and refusals ----------------------------------------------------------------


def _wait_for(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_cancelled_stream_stops_the_generation(triton: TritonProcess) -> None:
    labels = {"model": VLM}
    cancelled = engine_metric(
        triton, "autoglm_engine_requests_total", outcome="cancelled", **labels
    )
    tokens = engine_metric(triton, "autoglm_engine_generated_tokens_total", **labels)
    max_tokens = 4000  # seconds of decoding: far more than the few responses read below
    s = Stream(triton)
    s.send(inputs(prompt(1), (png(4),), max_tokens=max_tokens, temperature=1.0, seed=3))
    for _ in range(3):
        assert s.next().finish_reason() == vc.FINISH_NONE
    s.close(cancel=True)
    _wait_for(
        lambda: (
            engine_metric(triton, "autoglm_engine_requests_total", outcome="cancelled", **labels)
            == cancelled + 1
        )
    )
    generated = engine_metric(triton, "autoglm_engine_generated_tokens_total", **labels) - tokens
    assert 3 <= generated < max_tokens / 4


@pytest.mark.parametrize(
    ("request_inputs", "tensor", "detail"),
    [
        (lambda: inputs(prompt(0), min_p=0.1), "sampling_parameters", "min_p: not implemented"),
        (lambda: inputs(prompt(0), top_p=0), "sampling_parameters", "top_p: must be in (0, 1]"),
        (lambda: inputs(prompt(0), (png(1),)), "image", "1 images for 0"),
        # Bytes outside the base64 alphabet (the backend's b64decode would drop them).
        (lambda: inputs(prompt(1), image_texts=[b"%PNG, not base64"]), "image", "not base64"),
        (
            lambda: inputs(prompt(1), (b"not an image at all",)),
            "image",
            "image 0",
        ),
        (
            lambda: inputs(prompt(0), exclude_input=False),
            "exclude_input_in_output",
            "streaming",
        ),
    ],
    ids=["unknown-key", "top-p", "placeholders", "base64", "not-an-image", "prepend-stream"],
)
def test_a_refused_request_names_the_tensor(
    stream: Stream, request_inputs: Any, tensor: str, detail: str
) -> None:
    stream.send(request_inputs())
    with pytest.raises(InferenceServerException) as info:
        stream.next()
    message = info.value.message()
    assert f"invalid input tensor '{tensor}'" in message
    assert detail in message
