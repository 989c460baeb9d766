"""Images end to end (issue #22): the Open-AutoGLM agent's screenshots through both front doors,
the real Triton and the CPU engine of the vLLM contract serving a tiny random-weight GLM-4.1V.

Random weights: the answers are gibberish, so the tests prove plumbing, not quality. That the
image reached the model: two different screenshots give different answers at temperature 0,
the same one the same answer, and the engine's own prompt count (image tokens included) equals
what the façade computed from the model's resize rule.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from PIL import Image as PILImage

from autoglm.client import (
    AsyncClient,
    Client,
    ClientConfig,
    Image,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from autoglm.server.app import start_server
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.contract_check import ContractMismatch
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.limits import PrincipalLimits
from autoglm.server.settings import Settings, TlsSettings
from autoglm.server.vision import ImageLimits, load_vision
from tests.support.otlp_receiver import OtlpReceiver

from .conftest import MODEL, VLM, Facade, audited
from .openai_sdk import sdk

pytestmark = pytest.mark.integration

SYSTEM = "You are a phone-operating agent. Answer with do(action=...) or finish(message=...)."
TASK = "Open the settings app and turn on Wi-Fi."


def screenshot(seed: int, size: tuple[int, int] = (1080, 2400)) -> bytes:
    """A phone-screenshot-sized PNG: flat background, coloured panels (like an app's UI)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.full((height, width, 3), 245, dtype=np.uint8)
    for _ in range(24):
        x, y = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
        w, h = int(rng.integers(60, 600)), int(rng.integers(40, 300))
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, size=3, dtype=np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def noise_png(side: int, seed: int = 0) -> bytes:
    """Incompressible: a PNG of about 3 × side² bytes."""
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def agent_messages(png: bytes) -> list[dict[str, object]]:
    """The agent's call shape: a system prompt, then the screenshot and the instruction."""
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png)}},
                {"type": "text", "text": TASK},
            ],
        },
    ]


@pytest.fixture(scope="module")
def oai(facade: Facade, pki: DevPki, token: str) -> Iterator[openai.OpenAI]:
    with sdk(facade, pki, token) as client:
        yield client


@pytest.fixture(scope="module")
def shots() -> tuple[bytes, bytes]:
    return screenshot(1), screenshot(2)


def _answer(client: Client, png: bytes, *, max_tokens: int = 12) -> tuple[str, int]:
    deltas = list(
        client.generate_stream(
            messages=[("system", SYSTEM), ("user", [Image(png, "image/png"), TASK])],
            model=VLM,
            max_tokens=max_tokens,
            temperature=0.0,
        )
    )
    return "".join(d.text for d in deltas), deltas[-1].prompt_tokens


def test_the_agents_streamed_call_through_the_openai_front_door(
    oai: openai.OpenAI, client: Client, shots: tuple[bytes, bytes], vlm_dir
) -> None:
    """The agent's exact request shape, streamed with usage: the prompt count the engine reports
    is the one the façade computed (its resize rule: image tokens of the resized screenshot)."""
    stream = oai.chat.completions.create(
        model=VLM,
        messages=agent_messages(shots[0]),  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0.0,
        top_p=0.85,
        frequency_penalty=0.2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens >= 1
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish in (["length"], ["stop"])
    counted = client.count_tokens(
        messages=[("system", SYSTEM), ("user", [Image(shots[0]), TASK])], model=VLM
    )
    assert usage.prompt_tokens == counted.prompt_tokens  # the engine's count = the façade's
    vision = load_vision(vlm_dir, limits=ImageLimits())
    assert vision is not None
    height, width = vision.resize.size(2400, 1080)
    image_tokens = vision.resize.tokens(height, width)
    assert counted.token_ids.count(vision.image_token_id) == image_tokens > 100


def test_the_image_reaches_the_model(client: Client, shots: tuple[bytes, bytes]) -> None:
    """At temperature 0 two screenshots give different answers; the same one the same answer."""
    first, prompt_tokens = _answer(client, shots[0])
    second, _ = _answer(client, shots[1])
    again, _ = _answer(client, shots[0])
    assert first != second
    assert first == again
    text_only = client.count_tokens(messages=[("system", SYSTEM), ("user", TASK)], model=VLM)
    assert prompt_tokens > text_only.prompt_tokens + 100  # the image tokens count


def test_both_front_doors_answer_alike(
    oai: openai.OpenAI, client: Client, shots: tuple[bytes, bytes]
) -> None:
    done = oai.chat.completions.create(
        model=VLM, messages=agent_messages(shots[1]), max_tokens=12, temperature=0.0  # type: ignore[arg-type]
    )  # fmt: skip
    grpc_text, prompt_tokens = _answer(client, shots[1])
    assert done.choices[0].message.content == grpc_text
    assert done.usage is not None and done.usage.prompt_tokens == prompt_tokens


def test_a_text_only_model_refuses_images_naming_the_part(
    oai: openai.OpenAI, client: Client, shots: tuple[bytes, bytes]
) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        client.generate(messages=[("user", [TASK, Image(shots[0])])], model=MODEL, max_tokens=1)
    assert err.value.field_violations[0][0] == "messages[0].parts[1].image"
    assert "does not accept images" in err.value.field_violations[0][1]
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=MODEL, messages=agent_messages(shots[0]), max_tokens=1)  # type: ignore[arg-type]
    assert bad.value.body["param"] == "messages[1].content[0]"  # type: ignore[index]


@pytest.mark.parametrize(
    ("parts", "field", "why"),
    [
        (lambda png: [Image(png)] * 11 + [TASK], "messages[0].parts[10].image", "limit of 10"),
        (lambda png: [Image(b"GIF89a not really"), TASK], "messages[0].parts[0].image", "not an"),
        (lambda png: [Image(png[: len(png) // 2]), TASK], "messages[0].parts[0].image", "corrupt"),
    ],
    ids=["eleven-images", "not-an-image", "truncated"],
)
def test_bad_images_are_refused_naming_the_part(
    client: Client, shots: tuple[bytes, bytes], parts, field: str, why: str
) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        client.generate(messages=[("user", parts(shots[0]))], model=VLM, max_tokens=1)
    assert err.value.field_violations[0][0] == field
    assert why in err.value.field_violations[0][1]


def test_a_decompression_bomb_is_refused_from_its_header(client: Client) -> None:
    """A small file that declares a 30000×30000 canvas is refused before any pixel is decoded."""
    bomb = io.BytesIO()
    PILImage.new("1", (30000, 30000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 1 << 20
    with pytest.raises(InvalidArgumentError, match="decompression bomb"):
        client.generate(messages=[("user", [Image(bomb.getvalue())])], model=VLM, max_tokens=1)


def test_a_grpc_request_above_4_mib_is_served(client: Client) -> None:
    """gRPC's default 4 MiB receive cap is too small for screenshots: the façade's is 32 MiB."""
    big = noise_png(1300)
    assert len(big) > 4 << 20
    done = client.generate(
        messages=[("user", [Image(big), "what is this"])], model=VLM, max_tokens=2
    )
    assert done.completion_tokens >= 1


def test_over_the_grpc_limit_is_resource_exhausted(client_config: ClientConfig) -> None:
    huge = b"\x89PNG" + bytes(33 << 20)
    with Client(client_config) as c, pytest.raises(ResourceExhaustedError):
        c.generate(messages=[("user", [Image(huge)])], model=VLM, max_tokens=1)


async def test_a_mixed_load_keeps_cancellation_audit_and_tracing(
    client_config: ClientConfig, facade: Facade, otlp: OtlpReceiver, shots: tuple[bytes, bytes]
) -> None:
    """Text and image streams at once: one of each is cancelled after its first delta, the others
    finish; every call has its audit record (CANCELLED for the two) and image calls are traced
    into Triton with the façade's image-handling time on the generation span."""

    async def stream(client: AsyncClient, rid: str, image: bytes | None, cancel: bool) -> str:
        content: object = [Image(image), TASK] if image is not None else TASK
        model = VLM if image is not None else MODEL
        got = 0
        async for _delta in client.generate_stream(
            messages=[("user", content)],  # type: ignore[list-item]
            model=model,
            max_tokens=24,
            temperature=0.0,
            request_id=rid,
        ):
            got += 1
            if cancel:
                return "cancelled"
        return "done" if got else "empty"

    async with AsyncClient(client_config) as client:
        jobs = {
            f"mixed-{kind}-{i}": stream(client, f"mixed-{kind}-{i}", image, cancel=i == 0)
            for i in range(3)
            for kind, image in (("text", None), ("image", shots[i % 2]))
        }
        results = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
    assert results == {rid: "cancelled" if rid.endswith("-0") else "done" for rid in jobs}
    records = audited(facade, *jobs)
    for rid in jobs:
        assert records[rid]["status"] == ("CANCELLED" if rid.endswith("-0") else "OK"), rid
        assert records[rid]["model"] == (VLM if "image" in rid else MODEL)

    def traced(spans: list) -> bool:  # type: ignore[type-arg]
        names = {(s.service_name, s.name) for s in spans}
        return any(s.attributes.get("autoglm.images") == 1 for s in spans) and any(
            svc == "triton" for svc, _ in names
        )

    spans = otlp.wait_for(traced, timeout=15)
    image_spans = [s for s in spans if s.attributes.get("autoglm.images") == 1]
    assert all(float(s.attributes["autoglm.image_seconds"]) > 0 for s in image_spans)


def test_a_principal_limit_holds_for_image_requests(
    client_config: ClientConfig, token_store: TokenStore, shots: tuple[bytes, bytes]
) -> None:
    one, _ = token_store.create(
        "one-image-stream", ["generate"], limits=PrincipalLimits(max_streams=1)
    )
    with Client(dataclasses.replace(client_config, token=one)) as c:
        stream = c.generate_stream(
            messages=[("user", [Image(shots[0]), TASK])],
            model=VLM,
            max_tokens=400,  # still generating when the second request comes
            temperature=0.0,
        )
        next(stream)
        with pytest.raises(ResourceExhaustedError, match="concurrent"):
            c.generate(messages=[("user", [Image(shots[1]), TASK])], model=VLM, max_tokens=1)
        rest = list(stream)
        assert rest and rest[-1].finish_reason in ("length", "stop")


def test_the_vision_model_is_listed_with_its_image_limits(client: Client) -> None:
    models = {m.name: m for m in client.list_models()}
    assert models[VLM].engine == "cpu_reference_vl"
    assert models[VLM].max_images == 10 and models[VLM].max_image_bytes == 20 << 20
    assert models[MODEL].max_images == 0


def test_a_model_under_the_wrong_engine_kind_is_refused_at_start(
    triton: TritonProcess, engine_link: EngineLink, pki: DevPki, token_store: TokenStore, vlm_dir
) -> None:
    """The vision model's folder pointed at the token-id Triton model: the façade asks Triton
    for the model's tensors and refuses to start, naming what the text contract misses."""
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(
            ModelSpec(name="mislabelled", triton_model=MODEL, tokenizer_dir=vlm_dir, engine="vllm"),
        ),
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=token_store.path,
        engine_link=engine_link,
        metrics_listen=None,
    )
    with pytest.raises(ContractMismatch) as err:
        asyncio.run(start_server(settings))
    message = str(err.value)
    assert f"model mislabelled (Triton model {MODEL}, engine vllm)" in message
    assert "no input 'text_input'" in message and "no output 'text_output'" in message
