"""The image side of the pipeline for a text engine (the vLLM contract), on the tiny GLM-4.1V:
check_request_images checks and resizes real PNGs off the loop, prepare renders the prompt with
one placeholder per image (kept as text for the engine) and counts each image's tokens in the
prompt ids (admission and the context check see them); every refusal names the caller's field."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from autoglm.server.api.openai.protocol import param_name
from autoglm.server.api.validation import validate_generate
from autoglm.server.errors import InvalidArgument
from autoglm.server.generation import pipeline
from autoglm.server.generation.images import CheckedImage
from autoglm.server.generation.plan import GeneratePlan
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.server.tokenization import expand_image_tokens
from autoglm.server.vision import ImageLimits
from autoglm.v1 import text_generation_pb2 as pb

PH = "<|begin_of_image|><|image|><|end_of_image|>"
SYSTEM = "You operate a phone."


def png(width: int, height: int, color: str = "#3a7") -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (width, height), color)
    image.paste("#fff", (width // 4, height // 4, width // 2, height // 2))  # not one flat color
    image.save(out, format="PNG")
    return out.getvalue()


SCREENSHOT = png(1080, 2400)  # the agent's phone screenshot


def vl_spec(folder: Path, **kw: object) -> ModelSpec:
    return ModelSpec(
        name="vl", triton_model="vl", tokenizer_dir=folder, engine="cpu_reference_vl", **kw
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def vl(vlm_dir: Path) -> ServedModel:
    return load_model(vl_spec(vlm_dir))


@pytest.fixture(scope="module")
def text_only(model_dir: Path) -> ServedModel:
    return load_model(ModelSpec(name="m", triton_model="m", tokenizer_dir=model_dir))


def image(data: bytes) -> pb.ContentPart:
    return pb.ContentPart(image=pb.Image(data=data, mime_type="image/png"))


def text(t: str) -> pb.ContentPart:
    return pb.ContentPart(text=t)


def chat(*messages: pb.ChatMessage, **sampling: object) -> GeneratePlan:
    req = pb.GenerateRequest(model="vl", messages=messages, sampling=pb.SamplingParams(**sampling))
    return validate_generate(req)


def agent_step(*images: bytes, instruction: str = "Open the settings.") -> GeneratePlan:
    return chat(
        pb.ChatMessage(role="system", content=SYSTEM),
        pb.ChatMessage(role="user", parts=[*(image(i) for i in images), text(instruction)]),
    )


async def prepared(plan: GeneratePlan, model: ServedModel) -> pipeline.Prepared:
    images = await pipeline.check_request_images(plan, model)
    return pipeline.prepare(plan, model, images)


def refused(call: object) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as info:
        call()  # type: ignore[operator]
    return info.value.violations


async def refused_async(plan: GeneratePlan, model: ServedModel) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as info:
        await prepared(plan, model)
    return info.value.violations


def unexpanded(model: ServedModel, text: str) -> list[int]:
    return model.encoder.tokenizer.encode(text, add_special_tokens=False).ids


async def test_the_agent_step_keeps_its_prompt_text_and_counts_its_image_tokens(
    vl: ServedModel,
) -> None:
    assert vl.vision is not None
    out = await prepared(agent_step(SCREENSHOT), vl)
    (checked,) = out.images
    # 1080x2400 at the tiny model's 1,000,000-pixel budget (the figure is 3,100 tokens
    # at 5,000,000): sides multiples of 28, the aspect ratio kept.
    assert (checked.width % 28, checked.height % 28) == (0, 0)
    assert checked.tokens == (checked.width // 28) * (checked.height // 28) == 592
    assert out.prompt_text == vl.encoder.render_chat(out.plan.input.messages)
    assert f"<|user|>\n{PH}\nOpen the settings.<|assistant|>" in (out.prompt_text or "")
    ids = unexpanded(vl, out.prompt_text or "")
    token = vl.vision.image_token_id
    assert ids.count(token) == 1
    assert list(out.prompt_ids) == expand_image_tokens(ids, token, [592])
    assert len(out.prompt_ids) == len(ids) + 591
    # What count-tokens answers is the same count.
    assert pipeline.encode_input(vl, out.plan.input, out.images) == list(out.prompt_ids)


async def test_images_in_several_turns_add_up_in_order(vl: ServedModel) -> None:
    small, wide = png(300, 200, "#a00"), png(1600, 400, "#00a")
    plan = chat(
        pb.ChatMessage(role="system", content=SYSTEM),
        pb.ChatMessage(role="user", parts=[image(SCREENSHOT), text("first")]),
        pb.ChatMessage(role="assistant", content="<answer>do(action=Tap)</answer>"),
        pb.ChatMessage(role="user", parts=[text("then"), image(small), image(wide)]),
    )
    out = await prepared(plan, vl)
    assert [(i.source_width, i.source_height) for i in out.images] == [
        (1080, 2400),
        (300, 200),
        (1600, 400),
    ]
    counts = [i.tokens for i in out.images]
    ids = unexpanded(vl, out.prompt_text or "")
    assert len(out.prompt_ids) == len(ids) + sum(counts) - len(counts)
    assert vl.vision is not None
    assert out.prompt_ids.count(vl.vision.image_token_id) == sum(counts)
    # The placeholders come before each turn's text (vLLM's string format), in message order.
    rendered = out.prompt_text or ""
    assert rendered.index("first") < rendered.index(f"{PH}\n{PH}\nthen")


async def test_a_resized_image_goes_on_as_png_of_its_new_size(vl: ServedModel) -> None:
    (checked,) = (await prepared(agent_step(SCREENSHOT), vl)).images
    with Image.open(io.BytesIO(checked.data)) as resized:
        assert (resized.format, resized.size) == ("PNG", (checked.width, checked.height))
    assert checked.mime == "image/png"


async def test_an_image_already_in_budget_goes_on_unchanged(vl: ServedModel) -> None:
    data = png(280, 196)  # multiples of 28, within every bound
    (checked,) = (await prepared(agent_step(data), vl)).images
    assert checked == CheckedImage(data, "image/png", 280, 196, 280, 196, 10 * 7)


def test_a_raw_prompt_is_kept_as_text(vl: ServedModel) -> None:
    plan = validate_generate(pb.GenerateRequest(model="vl", prompt="Once upon a time"))
    out = pipeline.prepare(plan, vl)
    assert out.prompt_text == "Once upon a time"
    ids = vl.encoder.tokenizer.encode("Once upon a time", add_special_tokens=True).ids
    assert list(out.prompt_ids) == ids


def test_an_ids_engine_keeps_no_prompt_text(text_only: ServedModel) -> None:
    plan = validate_generate(pb.GenerateRequest(model="m", prompt="Once upon a time"))
    assert pipeline.prepare(plan, text_only).prompt_text is None


@pytest.mark.parametrize(
    "messages",
    [
        [pb.ChatMessage(role="user", content="look: <|image|>")],
        [pb.ChatMessage(role="user", parts=[text("look: <|image|>")])],
    ],
)
def test_the_image_token_in_a_callers_text_is_refused(
    vl: ServedModel, messages: list[pb.ChatMessage]
) -> None:
    plan = chat(pb.ChatMessage(role="system", content=SYSTEM), *messages)
    ((field, why),) = refused(lambda: pipeline.prepare(plan, vl))
    assert field == "messages[1].content"
    assert "<|image|>" in why and "image parts" in why


def test_the_image_token_in_a_raw_prompt_is_refused(vl: ServedModel) -> None:
    plan = validate_generate(pb.GenerateRequest(model="vl", prompt="x <|image|> y"))
    ((field, _),) = refused(lambda: pipeline.prepare(plan, vl))
    assert field == "prompt"
    assert refused(lambda: pipeline.encode_input(vl, plan.input))[0][0] == "prompt"


def test_a_text_only_model_takes_that_text_as_text(text_only: ServedModel) -> None:
    plan = chat(pb.ChatMessage(role="user", content="look: <|image|>"))
    assert pipeline.prepare(plan, text_only).prompt_ids


@pytest.mark.parametrize("engine", ["cpu_reference", "cpu_reference_vl"])
async def test_a_text_only_model_refuses_images_naming_the_part(
    model_dir: Path, engine: str
) -> None:
    model = load_model(
        ModelSpec(name="m", triton_model="m", tokenizer_dir=model_dir, engine=engine)
    )
    plan = chat(
        pb.ChatMessage(role="user", content="hi"),
        pb.ChatMessage(role="user", parts=[text("look"), image(SCREENSHOT)]),
    )
    ((field, why),) = await refused_async(plan, model)
    assert field == "messages[1].parts[1].image"
    assert "does not accept images" in why
    # The OpenAI caller's name of it: the part of `content` they sent.
    assert param_name(field, prompt_field="messages") == "messages[1].content[1]"


async def test_the_count_limit_names_the_first_image_over_it(vlm_dir: Path) -> None:
    model = load_model(vl_spec(vlm_dir, image_limits=ImageLimits(max_images=2)))
    junk = b"not an image"  # nothing is decoded for a request over the count
    plan = chat(
        pb.ChatMessage(role="user", parts=[image(junk), text("a")]),
        pb.ChatMessage(role="user", parts=[image(junk), image(junk)]),
    )
    ((field, why),) = await refused_async(plan, model)
    assert field == "messages[1].parts[1].image"
    assert "3 images exceed the limit of 2" in why


async def test_a_bad_image_is_refused_naming_its_part(vl: ServedModel) -> None:
    plan = chat(pb.ChatMessage(role="user", parts=[image(SCREENSHOT), image(b"GIF89a junk")]))
    ((field, _),) = await refused_async(plan, vl)
    assert field == "messages[0].parts[1].image"


async def test_the_image_byte_limit_is_the_models(vlm_dir: Path) -> None:
    model = load_model(vl_spec(vlm_dir, image_limits=ImageLimits(max_bytes=len(SCREENSHOT) - 1)))
    ((field, why),) = await refused_async(agent_step(SCREENSHOT), model)
    assert field == "messages[1].parts[0].image"
    assert f"exceed the limit of {len(SCREENSHOT) - 1} bytes" in why


async def test_image_tokens_count_towards_the_context(vlm_dir: Path) -> None:
    model = load_model(vl_spec(vlm_dir, max_context_tokens=600))
    # 592 image tokens and the turn's text: no room left for an answer.
    ((field, why),) = await refused_async(agent_step(SCREENSHOT), model)
    assert field == "prompt"
    assert "600-token context" in why
    budget = await prepared(agent_step(png(280, 196)), model)  # 70 image tokens fit
    assert budget.max_new_tokens == min(256, 600 - len(budget.prompt_ids))


async def test_a_smaller_pixel_budget_gives_fewer_tokens(vlm_dir: Path) -> None:
    model = load_model(vl_spec(vlm_dir, image_max_pixels=200_000))
    (checked,) = (await prepared(agent_step(SCREENSHOT), model)).images
    assert checked.tokens == 112  # transformers' processor at longest_edge 200,000 (test_vision)


def test_logprobs_are_refused_on_a_text_engine(vl: ServedModel) -> None:
    plan = chat(pb.ChatMessage(role="user", content="hi"), logprobs=True)
    ((field, why),) = refused(lambda: pipeline.prepare(plan, vl))
    assert field == "sampling.logprobs"
    assert "cpu_reference_vl" in why


async def test_an_image_token_id_the_tokenizer_disagrees_with_is_refused_at_load(
    vlm_dir: Path, tmp_path: Path
) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(vlm_dir / name, tmp_path / name)
    shutil.copy(vlm_dir / "generation_config.json", tmp_path / "generation_config.json")
    shutil.copy(vlm_dir / "preprocessor_config.json", tmp_path / "preprocessor_config.json")
    config = json.loads((vlm_dir / "config.json").read_text())
    config["image_token_id"] = 100  # an ordinary BPE token of the same tokenizer
    (tmp_path / "config.json").write_text(json.dumps(config))
    try:
        model = load_model(vl_spec(tmp_path))
    except ValueError:
        return  # refused at start: what this test asks for
    await prepared(agent_step(SCREENSHOT), model)  # raises ValueError today, not ServiceError
