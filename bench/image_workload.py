"""What the image scenario sends: the Open-AutoGLM agent's call, one screenshot per request.

Each request is the agent's shape (tests/integration/test_images.py): a system prompt, then a
user turn holding the screenshot and the instruction, streamed at temperature 0. The same
requests go down every path:

- the façade's front doors get the original screenshot (the gRPC API as an image part, the
  OpenAI API as a `data:` URL) and do everything themselves;
- the direct path gets what the façade would send Triton for it, made here by the façade's own
  code (`validate_generate` → `check_images` → `prepare` → the vLLM contract's request): the
  rendered prompt with its image placeholder, and the screenshot *resized to the model's
  budget* and re-encoded. So both sides ask the engine for exactly the same work, and
  everything the façade does with the image (receiving ~0.9 MB, decoding, resizing,
  re-encoding, base64) is in what it adds. Sending the original instead would move the
  resize into the engine's processor: different engine work, not a baseline.

A "text" twin of each request (the same turns without the screenshot) measures what the
façade spends on a request without image handling (`ImageRequest.png` None).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from autoglm.bench.workload import LengthDist
from autoglm.server.api.validation import validate_generate
from autoglm.server.engine.text_request import TextEngineRequest
from autoglm.server.generation.images import CheckedImage, check_images
from autoglm.server.generation.pipeline import prepare
from autoglm.server.generation.plan import engine_sampling
from autoglm.server.models import ServedModel
from autoglm.v1 import text_generation_pb2 as pb

# The agent's call: its system prompt is long in reality (Open-AutoGLM's phone agent prompt);
# a short one keeps the tiny model's prefill about the image.
SYSTEM = "You are a phone-operating agent. Answer with do(action=...) or finish(message=...)."
TASKS = (
    "Open the settings app and turn on Wi-Fi.",
    "Find the battery settings and turn on battery saver.",
    "Open Bluetooth and pair with the first device listed.",
    "Go back to the home screen and open the camera.",
)


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One agent step. `png` is the screenshot as the agent sends it (None: the text twin)."""

    index: int  # which screenshot and task (paths cache what they build per index)
    system: str
    task: str
    png: bytes | None
    max_tokens: int
    # What the façade sends Triton for it (the direct path's request, its id left to fill).
    engine: TextEngineRequest
    checked: CheckedImage | None  # the façade's check of the screenshot (its resize)

    def text_twin(self) -> ImageRequest:
        return replace(self, png=None, checked=None)


def agent_request(
    model: str, *, system: str, task: str, png: bytes | None, max_tokens: int
) -> pb.GenerateRequest:
    """The gRPC request of one agent step, as autoglm.client builds it for
    `messages=[("system", …), ("user", [Image(png), task])]`, temperature 0."""
    parts = [pb.ContentPart(text=task)]
    if png is not None:
        parts.insert(0, pb.ContentPart(image=pb.Image(data=png, mime_type="image/png")))
    return pb.GenerateRequest(
        model=model,
        messages=[
            pb.ChatMessage(role="system", content=system),
            pb.ChatMessage(role="user", parts=parts),
        ],
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


def _engine_request(
    served: ServedModel, png: bytes, task: str, max_tokens: int
) -> tuple[TextEngineRequest, CheckedImage]:
    """What the façade sends Triton for this step, by the façade's own functions (the same
    calls as api/calls.py and generation/text_pipeline.py make)."""
    assert served.vision is not None, f"{served.spec.name} takes no images"
    request = agent_request(
        served.spec.name, system=SYSTEM, task=task, png=png, max_tokens=max_tokens
    )
    plan = validate_generate(request)
    checked = check_images(plan.input.images, served.vision)
    prepared = prepare(plan, served, checked)
    assert prepared.prompt_text is not None, "a vLLM-contract model renders text"
    engine = TextEngineRequest(
        triton_model=served.spec.triton_model,
        request_id="",
        prompt=prepared.prompt_text,
        images=[image.data for image in checked],
        max_new_tokens=prepared.max_new_tokens,
        sampling=engine_sampling(plan.sampling),
        stop=plan.sampling.stop,
        skip_special_tokens=plan.sampling.skip_special_tokens,
    )
    return engine, checked[0]


def image_requests(
    served: ServedModel, pngs: Sequence[bytes], output_len: LengthDist, *, seed: int = 0
) -> list[ImageRequest]:
    """One request per screenshot, each with its own task and output length (seeded)."""
    rng = random.Random(seed)
    out = []
    for i, png in enumerate(pngs):
        task = TASKS[i % len(TASKS)]
        max_tokens = output_len.sample(rng)
        engine, checked = _engine_request(served, png, task, max_tokens)
        out.append(ImageRequest(i, SYSTEM, task, png, max_tokens, engine, checked))
    return out


class ImageWorkload:
    """The requests in turn, endlessly (loadgen.Requests)."""

    def __init__(self, requests: Sequence[ImageRequest]) -> None:
        if not requests:
            raise ValueError("image workload: no requests")
        self._requests = list(requests)
        self._next = 0

    def next(self) -> ImageRequest:
        req = self._requests[self._next % len(self._requests)]
        self._next += 1
        return req
