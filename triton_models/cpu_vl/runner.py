"""The generation loop of the CPU vision-language engine: prompt text + image files in, text out.

No Triton imports: the Triton model (templates/cpu_vl/1/model.py) builds a `VlGeneration` from
the vLLM backend's tensors (vllm_contract.py) and sends each yielded `VlStep` on; this loop is
tested directly.
It does what vLLM does for a GLM-4.1V checkpoint, so the façade cannot tell the two apart:

- The prompt is tokenized with the checkpoint's tokenizer, adding no special tokens: the chat
  template already wrote `[gMASK]<sop>…`. (vLLM encodes a raw text prompt with the tokenizer's
  default; the tiny checkpoint's post-processor adds nothing, so both give the same ids.)
- Each image file is opened with Pillow and converted to RGB (vllm_backend `src/utils/request.py`),
  preprocessed by transformers' GLM-4.1V image processor (the PIL one; torchvision is not
  installed) with the checkpoint's preprocessor_config.json, and its `<|image|>` placeholder is
  expanded to t·h·w / merge² image tokens (positions.py). The number of placeholders must equal
  the number of images (vLLM refuses a mismatch too).
- One token per step with a KV cache; `is_cancelled` is checked before the prefill and between
  steps. Each request has its own cache, sampler, positions and text state, and the model's
  shared `rope_deltas` attribute is never used (positions.py says why), so requests run in
  parallel threads on one runner.
- Ends as vLLM v1 does (`vllm/v1/core/sched/utils.py::check_stop`, in that order): the token
  count reaching `max_tokens`, or the sequence reaching the context length → "length"; an
  end-of-sequence id of generation_config.json or a `stop_token_ids` entry → "stop". That token
  counts in `token_ids` (vLLM's `num_output_tokens` includes it) but adds no text (the v1
  detokenizer drops a stop-terminating token). A stop string → "stop", text before it only.
- Log-probabilities: vLLM's default `logprobs_mode` "raw_logprobs", the chosen token's
  log-softmax over the model's logits before any penalty or temperature.

Sampling reuses cpu_engine's Sampler (temperature, top-k, top-p, seed). Penalties take vLLM's
scopes (`vllm/model_executor/layers/utils.py::apply_penalties`): the repetition penalty covers
the prompt and the output, the presence and frequency penalties the output only. One difference
stays: the Sampler subtracts presence/frequency penalties after dividing by the temperature
(TensorRT-LLM's order), vLLM before; greedy decoding (temperature 0, the agent's setting) and
temperature 1 are not affected.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tokenizers import Tokenizer

from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.cpu_engine.sampling import Sampler, SamplingConfig
from autoglm.triton_models.cpu_vl.positions import PromptLayout, layout_prompt
from autoglm.triton_models.cpu_vl.text_output import TextOutput
from autoglm.triton_models.refusal import Refusal

__all__ = ["VisionLanguageRunner", "VlGeneration", "VlStep"]

IMAGE_TOKEN = "<|image|>"  # GLM-4.1V's placeholder (transformers Glm4vProcessor.image_token)


@dataclass(frozen=True, slots=True)
class VlGeneration:
    prompt: str  # text_input: the rendered prompt, placeholders included
    images: tuple[bytes, ...]  # image files (already base64-decoded), in placeholder order
    max_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()  # stop strings: excluded from the text, finish "stop" (vLLM)
    stop_token_ids: tuple[int, ...] = ()  # besides the generation_config's eos ids
    skip_special_tokens: bool = True
    logprobs: bool = False  # the chosen token's log-probability per new token


@dataclass(frozen=True, slots=True)
class VlStep:
    text: str  # new text since the previous step (may be "" while held back)
    token_ids: tuple[int, ...]  # the new tokens (num_output_tokens counts them)
    num_input_tokens: int  # prompt tokens after image expansion (image tokens count)
    finish_reason: str | None  # None until the last step: "stop" | "length"
    logprobs: tuple[float, ...] = ()


class VisionLanguageRunner:
    """Loads one GLM-4.1V HF folder once and runs any number of generations (thread-safe)."""

    def __init__(self, model_dir: Path, *, torch_threads: int = 1) -> None:
        from transformers import Glm4vForConditionalGeneration
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        # One intra-op thread per generation, as cpu_engine/runner.py: concurrency comes from
        # requests in parallel threads (torch releases the GIL inside kernels).
        torch.set_num_threads(torch_threads)
        self.model = Glm4vForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32
        ).eval()
        self.config = self.model.config
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.image_processor = Glm4vImageProcessorPil.from_pretrained(model_dir)
        self.image_token_id = int(self.config.image_token_id)
        if self.tokenizer.token_to_id(IMAGE_TOKEN) != self.image_token_id:
            raise ValueError(f"{model_dir}: {IMAGE_TOKEN} is not config.json's image_token_id")
        self.merge_size = int(self.config.vision_config.spatial_merge_size)
        self.max_model_len = int(self.config.text_config.max_position_embeddings)
        self.end_ids = _end_ids(model_dir)

    def steps(self, request: VlGeneration, *, is_cancelled: Callable[[], bool]) -> Iterator[VlStep]:
        """Yields one VlStep per generated token; the last one has a finish_reason.

        Raises Refusal (a ValueError naming the tensor) for what this model cannot take: a
        placeholder/image count mismatch, an image that does not decode, an empty prompt or one
        that fills the context, max_tokens < 1, a sampling value out of range. Yields nothing
        when cancelled before the first token, and stops after the step where it sees it.
        """
        if request.max_tokens < 1:
            raise Refusal(
                vc.SAMPLING_PARAMETERS.name, f"max_tokens must be >= 1, got {request.max_tokens}"
            )
        request.sampling.validate()
        repetition = request.sampling.repetition_penalty
        # The sampler sees the output only (presence/frequency scope); the repetition penalty,
        # whose scope includes the prompt, is applied here before it.
        sampler = Sampler(dataclasses.replace(request.sampling, repetition_penalty=1.0))
        layout, pixels = self._prepare(request)
        if is_cancelled():
            return
        prompt_len = len(layout.input_ids)
        stop_ids = self.end_ids | frozenset(request.stop_token_ids)
        text = TextOutput(
            self.tokenizer, stop=request.stop, skip_special_tokens=request.skip_special_tokens
        )
        prompt_ids = torch.tensor(layout.input_ids, dtype=torch.long)  # [prompt_len]
        generated: list[int] = []
        # Inference mode is entered per model call and per sampling step, never held across a
        # yield: it is thread-local state that would leak into the caller between steps.
        raw, cache = self._prefill(layout, pixels)  # raw: [vocab] float32
        while True:
            with torch.inference_mode():
                output_ids = torch.tensor(generated, dtype=torch.long)  # [n]
                logits = _repetition_penalty(raw, prompt_ids, output_ids, repetition)
                token, _ = sampler.choose(logits, output_ids)
                log_probs = (_log_prob(raw, token),) if request.logprobs else ()
            generated.append(token)
            finish, piece = self._finish_and_text(
                token, text, stop_ids, request.max_tokens, prompt_len, len(generated)
            )
            yield VlStep(
                text=piece,
                token_ids=(token,),
                num_input_tokens=prompt_len,
                finish_reason=finish,
                logprobs=log_probs,
            )
            if finish is not None or is_cancelled():
                return
            raw, cache = self._decode(token, layout.next_position + len(generated) - 1, cache)

    def _finish_and_text(
        self,
        token: int,
        text: TextOutput,
        stop_ids: frozenset[int],
        max_tokens: int,
        prompt_len: int,
        output_len: int,
    ) -> tuple[str | None, str]:
        """(finish reason or None, the step's text), checked in vLLM v1's order."""
        if output_len >= max_tokens or prompt_len + output_len >= self.max_model_len:
            # Length first: the token is detokenized like any other (an end id that is also the
            # last allowed token shows as text when special tokens are kept, as in vLLM).
            piece = text.add(token)
            finish = vc.FINISH_STOP if text.stopped else vc.FINISH_LENGTH
            return finish, piece + text.finish()
        if token in stop_ids:
            return vc.FINISH_STOP, text.finish()  # the stop token itself adds no text
        piece = text.add(token)
        if text.stopped:
            return vc.FINISH_STOP, piece
        return None, piece

    def _prepare(self, request: VlGeneration) -> tuple[PromptLayout, dict[str, torch.Tensor]]:
        """Tokenize, check the placeholders, preprocess the images, expand and lay out."""
        ids = self.tokenizer.encode(request.prompt, add_special_tokens=False).ids
        if not ids:
            raise Refusal(vc.TEXT_INPUT.name, "the prompt is empty")
        placeholders = sum(1 for t in ids if t == self.image_token_id)
        if placeholders != len(request.images):
            raise Refusal(
                vc.IMAGE.name,
                f"{len(request.images)} images for {placeholders} {IMAGE_TOKEN} placeholders in "
                f"{vc.TEXT_INPUT.name}: each image needs exactly one, in order",
            )
        pixels: dict[str, torch.Tensor] = {}
        grids: list[tuple[int, int, int]] = []
        if request.images:
            images = [_open_image(i, data) for i, data in enumerate(request.images)]
            try:
                features = self.image_processor(images=images, return_tensors="pt")
            except ValueError as err:  # e.g. an aspect ratio over 200:1 (smart_resize)
                raise Refusal(vc.IMAGE.name, str(err)) from err
            pixels = {
                "pixel_values": features["pixel_values"],  # [patches, 3·2·14·14]
                "image_grid_thw": features["image_grid_thw"],  # [images, 3]
            }
            grids = [(int(t), int(h), int(w)) for t, h, w in features["image_grid_thw"].tolist()]
        layout = layout_prompt(
            ids, image_token_id=self.image_token_id, grids=grids, merge_size=self.merge_size
        )
        if len(layout.input_ids) >= self.max_model_len:
            raise Refusal(
                vc.TEXT_INPUT.name,
                f"the prompt is {len(layout.input_ids)} tokens with its image tokens; this "
                f"model's context is {self.max_model_len}, which leaves no room for output",
            )
        return layout, pixels

    @torch.inference_mode()
    def _prefill(self, layout: PromptLayout, pixels: dict[str, torch.Tensor]):
        """The prompt (vision tower + text) through the model: (last logits [vocab], KV cache)."""
        out = self.model(
            input_ids=torch.tensor([layout.input_ids], dtype=torch.long),  # [1, prompt_len]
            position_ids=layout.position_ids.unsqueeze(1),  # [3, 1, prompt_len]
            use_cache=True,
            logits_to_keep=1,  # the last position's logits only, not [prompt_len, vocab]
            **pixels,
        )
        return out.logits[0, -1].float(), out.past_key_values

    @torch.inference_mode()
    def _decode(self, token: int, position: int, cache):
        """One token at `position` (all three rotary axes) on the request's own KV cache."""
        out = self.model(
            input_ids=torch.tensor([[token]], dtype=torch.long),  # [1, 1]
            position_ids=torch.full((3, 1, 1), position, dtype=torch.long),
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[0, -1].float(), out.past_key_values


def _open_image(index: int, data: bytes) -> Image.Image:
    """Pillow, converted to RGB, as vllm_backend does; anything Pillow cannot read is refused."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # UnidentifiedImageError is an OSError; truncated files raise OSError or SyntaxError.
        kind = "not an image Pillow can read" if isinstance(err, UnidentifiedImageError) else err
        raise Refusal(vc.IMAGE.name, f"image {index}: {kind}") from err


def _repetition_penalty(
    logits: torch.Tensor, prompt_ids: torch.Tensor, output_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """vLLM/HF repetition penalty over the set of prompt and output ids (a new tensor)."""
    if penalty == 1.0:
        return logits
    ids = torch.unique(torch.cat([prompt_ids, output_ids]))  # [u]
    selected = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(selected > 0, selected / penalty, selected * penalty)
    return logits


def _log_prob(raw_logits: torch.Tensor, token: int) -> float:
    return float(torch.log_softmax(raw_logits, dim=-1)[token])


def _end_ids(model_dir: Path) -> frozenset[int]:
    """Every end-of-sequence id: generation_config.json's and config.json's `eos_token_id` (an
    int or a list) and the tokenizer's eos token, as vLLM gathers them
    (`SamplingParams.update_from_generation_config` adds generation_config's to the stop ids)."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            ids.update([value] if isinstance(value, int) else value or [])
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        eos = json.loads(tokenizer_config.read_text()).get("eos_token")
        if isinstance(eos, str):
            token_id = Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id(eos)
            if token_id is not None:
                ids.add(token_id)
    if not ids:
        raise ValueError(f"{model_dir}: no eos_token_id in generation_config.json/config.json")
    return frozenset(ids)
