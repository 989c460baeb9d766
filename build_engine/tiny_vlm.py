"""A tiny random-weight GLM-4.1V checkpoint: the CPU stand-in for AutoGLM-Phone-9B (plumbing only).

No small real vision-language weights exist anywhere installable here, so the CPU path serves a
`Glm4vForConditionalGeneration` built from a tiny config with seeded random weights. Its answers
are gibberish; it exists to prove that images reach the model (two images give two different
greedy answers), that the tensor contract and the image-token counts are right, and that
everything the façade adds works with images.

What is kept from the real model (glm41v.py): the architecture, the vision geometry (patch 14,
temporal patch 2, merge 2, so an image of a given resized size costs exactly as many image tokens
as in AutoGLM-Phone-9B), the special tokens, the chat template, several end-of-sequence ids in
generation_config.json and the image processor's preprocessor_config.json. The text tokenizer is
SmolLM2's byte-level BPE (any text encodes) with GLM's special tokens added.

`prepare_tiny_vlm` writes the folder atomically (a temp dir renamed into place) and is a no-op
once its marker exists, like default_model.prepare. Nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from autoglm.build_engine import default_model, glm41v
from autoglm.build_engine.default_model import ModelPrepError
from autoglm.build_engine.manifest import sha256_file

__all__ = [
    "MARKER",
    "MAX_PIXELS",
    "TINY_VLM_NAME",
    "ensure_tiny_vlm",
    "is_prepared",
    "prepare_tiny_vlm",
]

TINY_VLM_NAME = "glm-4.1v-tiny-random"
MARKER = "autoglm-model.json"
SEED = 20250701  # GLM-4.1V's release date; any fixed value makes the weights reproducible
# The pixel budget (`size.longest_edge`, vLLM's `max_pixels`; smart_resize compares it with
# temporal_patch_size × height × width, so 1,000,000 allows 500,000 pixels). A 1080×2400
# screenshot becomes 448×1036, 592 image tokens; measured on this 2-core machine, one thread:
# preprocessing ~70 ms (PNG decode, resize, normalise), prefill ~56 ms (vision tower + 966-token
# text prompt), decode ~1.7 ms per token. At the real budget, 5,000,000 (3,108 image tokens),
# the prefill alone is ~0.95 s and preprocessing ~0.25 s per screenshot, which tests and
# `make run` sending several screenshots at once on two cores cannot afford. README.md says so.
MAX_PIXELS = 1_000_000
# Context length: room for Open-AutoGLM's long system prompt, a few screenshots and history.
MAX_POSITION_EMBEDDINGS = 8192

# ~0.18 M parameters besides the two embedding matrices (text 2 layers × 64 wide, vision 2
# blocks × 32 wide). The rotary sections sum to head_dim × partial_rotary_factor / 2 = 16·0.5/2.
_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,  # as GLM-4.1V
        "mrope_section": [2, 1, 1],  # temporal, height, width
    },
}
_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,  # the patch merger's width
    "out_hidden_size": _TEXT["hidden_size"],
    "patch_size": glm41v.PATCH_SIZE,
    "spatial_merge_size": glm41v.MERGE_SIZE,
    "temporal_patch_size": glm41v.TEMPORAL_PATCH_SIZE,
    "image_size": 336,  # the learned 24×24 position grid, interpolated to each image
}


def is_prepared(out_dir: Path) -> bool:
    return (out_dir / MARKER).is_file() and (out_dir / "model.safetensors").is_file()


def ensure_tiny_vlm(home: Path, console: Console) -> Path:
    """HOME/models/glm-4.1v-tiny-random, prepared once from the prepared SmolLM2 tokenizer."""
    out = home / "models" / TINY_VLM_NAME
    if not is_prepared(out):
        base = home / "models" / default_model.MODEL_NAME
        if not default_model.is_prepared(base):
            raise ModelPrepError(
                f"{base} is not prepared: the tiny VLM takes its tokenizer from it "
                "(`autoglm model prepare` does both)"
            )
        console.print(f"[bold]Preparing {TINY_VLM_NAME}[/] (random weights, plumbing only; once)")
        prepare_tiny_vlm(out, base_tokenizer_dir=base, console=console)
    return out


def prepare_tiny_vlm(
    out_dir: Path, *, base_tokenizer_dir: Path, console: Console | None = None
) -> Path:
    """Write the tiny GLM-4.1V folder at out_dir (atomic; no-op when already prepared)."""
    console = console or Console(stderr=True)
    if is_prepared(out_dir):
        return out_dir
    if not (base_tokenizer_dir / "tokenizer.json").is_file():
        raise ModelPrepError(f"no tokenizer.json in {base_tokenizer_dir} (SmolLM2's folder)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".prepare-") as tmp,
        default_model.prepare_progress(console) as progress,
    ):
        staged = Path(tmp) / "model"
        staged.mkdir()
        started = time.monotonic()
        task = progress.add_task("tokenizer: SmolLM2's BPE + GLM-4.1V's special tokens", total=4)
        tokenizer = _write_tokenizer(base_tokenizer_dir, staged)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in glm41v.SPECIAL_TOKENS}
        progress.update(task, advance=1, description="random-weight Glm4vForConditionalGeneration")
        parameters = _write_model(staged, ids, vocab_size=len(tokenizer))
        progress.update(task, advance=1, description="check: one image through processor + model")
        _self_check(staged)
        progress.update(task, advance=1, description="record provenance")
        (staged / "README.md").write_text(_readme())
        (staged / MARKER).write_text(
            json.dumps(
                {
                    "model": TINY_VLM_NAME,
                    "architecture": "Glm4vForConditionalGeneration",
                    "weights": f"random (torch seed {SEED}); plumbing only",
                    "tokenizer_source": str(base_tokenizer_dir / "tokenizer.json"),
                    "tokenizer_source_sha256": sha256_file(base_tokenizer_dir / "tokenizer.json"),
                    "chat_template_source": glm41v.CHAT_TEMPLATE_SOURCE,
                    "parameters": parameters,
                    "max_pixels": MAX_PIXELS,
                    "prepare_seconds": round(time.monotonic() - started, 1),
                },
                indent=2,
            )
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
        progress.update(task, advance=1, description=f"ready: {out_dir}")
    return out_dir


def _write_tokenizer(base_dir: Path, staged: Path):  # -> PreTrainedTokenizerFast
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    # Added as special tokens: matched before the BPE (one id each, whatever surrounds them) and
    # dropped from decoded text when skip_special_tokens is set, as in GLM's own tokenizer.
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in glm41v.SPECIAL_TOKENS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=glm41v.EOS_TOKEN,
        pad_token=glm41v.PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )
    tokenizer.chat_template = glm41v.CHAT_TEMPLATE
    tokenizer.save_pretrained(staged)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    # transformers 5 keeps the template in chat_template.jinja only; tokenizer_config.json gets a
    # copy too, for readers that look there (server/tokenization.py prefers the .jinja file).
    config_path = staged / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = glm41v.CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (staged / "chat_template.jinja").write_text(glm41v.CHAT_TEMPLATE)
    return tokenizer


def _write_model(staged: Path, ids: dict[str, int], *, vocab_size: int) -> int:
    import torch
    from transformers import GenerationConfig, Glm4vConfig, Glm4vForConditionalGeneration

    eos = ids[glm41v.EOS_TOKEN]
    end_ids = [ids[t] for t in glm41v.END_TOKENS]
    config = Glm4vConfig(
        text_config={**_TEXT, "vocab_size": vocab_size, "pad_token_id": ids[glm41v.PAD_TOKEN]},
        vision_config=dict(_VISION),
        image_token_id=ids[glm41v.IMAGE_TOKEN],
        video_token_id=ids[glm41v.VIDEO_TOKEN],
        image_start_token_id=ids[glm41v.IMAGE_START],
        image_end_token_id=ids[glm41v.IMAGE_END],
        video_start_token_id=ids[glm41v.VIDEO_START],
        video_end_token_id=ids[glm41v.VIDEO_END],
    )
    config.eos_token_id = end_ids
    config.pad_token_id = ids[glm41v.PAD_TOKEN]
    # A private RNG state: the weights depend on SEED only, and callers' torch RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Glm4vForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(staged, safe_serialization=True)
    GenerationConfig(
        eos_token_id=end_ids, pad_token_id=ids[glm41v.PAD_TOKEN], bos_token_id=None
    ).save_pretrained(staged)
    _write_preprocessor_config(staged)
    if eos != end_ids[0]:
        raise ModelPrepError(f"the tokenizer's eos {eos} is not generation_config's first end id")
    return sum(p.numel() for p in model.parameters())


def _write_preprocessor_config(staged: Path) -> None:
    (staged / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Glm4vImageProcessor",
                "processor_class": "Glm4vProcessor",
                "size": {"shortest_edge": glm41v.MIN_PIXELS, "longest_edge": MAX_PIXELS},
                "patch_size": glm41v.PATCH_SIZE,
                "temporal_patch_size": glm41v.TEMPORAL_PATCH_SIZE,
                "merge_size": glm41v.MERGE_SIZE,
                "do_resize": True,
                "resample": glm41v.RESAMPLE_BICUBIC,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": list(glm41v.IMAGE_MEAN),
                "image_std": list(glm41v.IMAGE_STD),
                "do_convert_rgb": True,
            },
            indent=2,
        )
        + "\n"
    )


def _self_check(staged: Path) -> None:
    """Load the folder back and run one small image and its placeholder through it."""
    import torch
    from PIL import Image
    from transformers import Glm4vForConditionalGeneration, PreTrainedTokenizerFast
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    tokenizer = PreTrainedTokenizerFast.from_pretrained(staged)
    processor = Glm4vImageProcessorPil.from_pretrained(staged)
    model = Glm4vForConditionalGeneration.from_pretrained(staged, dtype=torch.float32).eval()
    png = io.BytesIO()
    Image.new("RGB", (56, 112), (200, 30, 30)).save(png, format="PNG")
    image = Image.open(io.BytesIO(png.getvalue())).convert("RGB")
    features = processor(images=[image], return_tensors="pt")
    grid = features["image_grid_thw"]  # [1, 3]: (t, h, w) in patches
    count = int(grid.prod()) // glm41v.MERGE_SIZE**2
    prompt = f"{glm41v.IMAGE_START}{glm41v.IMAGE_TOKEN * count}{glm41v.IMAGE_END}hi"
    input_ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    mm_types = (input_ids == model.config.image_token_id).int()
    with torch.inference_mode():
        out = model(
            input_ids=input_ids,
            pixel_values=features["pixel_values"],
            image_grid_thw=grid,
            mm_token_type_ids=mm_types,
        )
    if out.logits.shape[:2] != input_ids.shape or not torch.isfinite(out.logits).all():
        raise ModelPrepError(f"self-check failed: logits {tuple(out.logits.shape)}")


def _readme() -> str:
    return f"""# {TINY_VLM_NAME}: a tiny GLM-4.1V with RANDOM weights (plumbing only)

Generated by `autoglm model prepare` (autoglm.build_engine.tiny_vlm). Its answers are
gibberish. It is the CPU stand-in for AutoGLM-Phone-9B (architecture GLM-4.1V,
`Glm4vForConditionalGeneration`), which cannot run on this machine, and exists to test the
serving path with images: that images reach the model (two different images give two different
answers at temperature 0), the engine's tensor contract, image-token counts in `usage`, and
everything the façade adds (limits, audit, tracing, cancellation).

- Weights: random, torch seed {SEED}, float32; ~0.18 M parameters besides the embeddings.
- Vision geometry as the real model: patch 14, temporal patch 2, spatial merge 2, so an image
  resized to H×W costs (H/28)·(W/28) image tokens, exactly as in AutoGLM-Phone-9B.
- Tokenizer: SmolLM2-135M-Instruct's byte-level BPE plus GLM-4.1V's special tokens
  (`[gMASK]`, `<sop>`, `<|user|>`, `<|begin_of_image|>`, `<|image|>`, `<think>`, …).
- Chat template: the real one ({glm41v.CHAT_TEMPLATE_SOURCE}).
- generation_config.json: several end-of-sequence ids, as GLM's (`<|endoftext|>`, `<|user|>`,
  `<|observation|>`).
- preprocessor_config.json: GLM-4.1V's image processor with a pixel budget (`longest_edge`) of
  {MAX_PIXELS:,} instead of the real deployment's {glm41v.REAL_MAX_PIXELS:,} (both compared with
  2 × height × width, as transformers' `smart_resize` does). At the real budget a 1080×2400
  screenshot is 3,108 image tokens and this model's prefill takes ~1 s per screenshot on one CPU
  core; at {MAX_PIXELS:,} it is resized to 448×1036, 592 image tokens, and the prefill takes
  ~60 ms. The façade resizes to whatever this file says, so image-token counts in `usage` follow
  this budget.
"""
