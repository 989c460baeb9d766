"""GLM-4.1V's size arithmetic from its config.json: the shapes and parameter counts the vLLM
build profile (vllm_profile.py) sizes memory with. Pure; the sources are cited where used."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Glm4vShape:
    """The numbers of a GLM-4.1V checkpoint that size its memory (config.json)."""

    vocab_size: int = 151_552
    hidden_size: int = 4096
    intermediate_size: int = 13_696
    num_layers: int = 40
    num_attention_heads: int = 32
    num_kv_heads: int = 2
    head_dim: int = 128
    max_position_embeddings: int = 32_768
    vision_depth: int = 24
    vision_hidden: int = 1536
    vision_heads: int = 12
    vision_out_hidden: int = 4096  # also the vision blocks' MLP width (glm4_1v.py)
    vision_intermediate: int = 13_696  # the patch merger's MLP width
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    vision_image_size: int = 336  # learned position embeddings: (336 / 14)^2 = 576
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Glm4vShape:
        """From a GLM-4.1V config.json (text_config / vision_config), defaults where absent.

        The defaults are transformers' Glm4vConfig() defaults (transformers 5.14), i.e.
        GLM-4.1V-9B; AutoGLM-Phone-9B's own config.json is read on the GPU host.
        """
        text = _section(config, "text_config")
        vision = _section(config, "vision_config")
        d = cls()
        heads = _int(text, "num_attention_heads", d.num_attention_heads)
        hidden = _int(text, "hidden_size", d.hidden_size)
        return cls(
            vocab_size=_int(text, "vocab_size", d.vocab_size),
            hidden_size=hidden,
            intermediate_size=_int(text, "intermediate_size", d.intermediate_size),
            num_layers=_int(text, "num_hidden_layers", d.num_layers),
            num_attention_heads=heads,
            num_kv_heads=_int(text, "num_key_value_heads", d.num_kv_heads),
            head_dim=_int(text, "head_dim", hidden // heads),
            max_position_embeddings=_int(
                text, "max_position_embeddings", d.max_position_embeddings
            ),
            vision_depth=_int(vision, "depth", d.vision_depth),
            vision_hidden=_int(vision, "hidden_size", d.vision_hidden),
            vision_heads=_int(vision, "num_heads", d.vision_heads),
            vision_out_hidden=_int(vision, "out_hidden_size", d.vision_out_hidden),
            vision_intermediate=_int(vision, "intermediate_size", d.vision_intermediate),
            patch_size=_int(vision, "patch_size", d.patch_size),
            spatial_merge_size=_int(vision, "spatial_merge_size", d.spatial_merge_size),
            temporal_patch_size=_int(vision, "temporal_patch_size", d.temporal_patch_size),
            vision_image_size=_int(vision, "image_size", d.vision_image_size),
            tie_word_embeddings=config.get("tie_word_embeddings") is True,
        )

    def kv_bytes_per_token(self, *, tp: int, kv_bytes: int) -> int:
        """KV cache bytes one token takes on one GPU: layers x (K, V) x KV heads x head_dim.

        40 x 2 x 2 x 128 x 2 B = 40 KiB at tp 1 (facts.md: ~40 KB a token). With TP each GPU
        holds its share of the KV heads, at least one (vLLM replicates them past their count).
        """
        heads = max(1, math.ceil(self.num_kv_heads / tp))
        return self.num_layers * 2 * heads * self.head_dim * kv_bytes

    def image_patches(self, max_pixels: int) -> int:
        """Patches of the largest image at the pixel budget (before the 2x2 merge)."""
        return max_pixels // (self.patch_size * self.patch_size)

    def image_tokens(self, max_pixels: int) -> int:
        """Tokens of the largest image (~6,377 at 5,000,000 pixels; a 1080x2400 screenshot
        is ~3,100)."""
        return self.image_patches(max_pixels) // (self.spatial_merge_size**2)


def _section(config: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = config.get(key)
    return value if isinstance(value, Mapping) else {}


def _int(section: Mapping[str, object], key: str, default: int) -> int:
    value = section.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


@dataclass(frozen=True, slots=True)
class ParamCounts:
    """Parameters by how they are stored: `*_linear` are the weights FP8 quantizes."""

    language_linear: int
    language_other: int  # embeddings, lm_head, norms, biases
    vision_linear: int
    vision_other: int  # patch/downsample convolutions, position embeddings, norms

    @property
    def total(self) -> int:
        return self.language_linear + self.language_other + self.vision_linear + self.vision_other

    def weight_bytes(self, precision: str) -> int:
        """Bytes of the weights: FP8 stores every linear weight in 1 byte (vision included,
        see the module docstring), everything else in bf16."""
        linear = self.language_linear + self.vision_linear
        other = self.language_other + self.vision_other
        per_linear = 1 if precision == "fp8" else 2
        return linear * per_linear + other * 2

    @classmethod
    def from_shape(cls, s: Glm4vShape) -> ParamCounts:
        """GLM-4.1V's parameter count from its shape (transformers' modeling_glm4v layout).

        For Glm4vConfig() this gives 10,292,777,472, what transformers 5.14 counts on
        Glm4vForConditionalGeneration(Glm4vConfig()) built on the meta device.
        """
        h, i, hd = s.hidden_size, s.intermediate_size, s.head_dim
        q, kv = s.num_attention_heads * hd, s.num_kv_heads * hd
        layer_linear = h * q + 2 * h * kv + q * h + h * 2 * i + i * h
        layer_other = q + 2 * kv + 4 * h  # q/k/v biases, four RMSNorms
        vh, vo, vi = s.vision_hidden, s.vision_out_hidden, s.vision_intermediate
        block_linear = vh * 3 * vh + vh * vh + 3 * vh * vo  # qkv, proj, gate/up/down
        merger_linear = vo * vo + 3 * vo * vi  # proj, gate/up/down
        patch = s.patch_size
        conv_in = 3 * s.temporal_patch_size * patch * patch * vh + vh
        downsample = vh * vo * s.spatial_merge_size**2 + vo
        position = (s.vision_image_size // patch) ** 2 * vh
        norms = 2 * vh * s.vision_depth + 2 * vh + 2 * vo  # blocks, post-conv/post norms, LN
        return cls(
            language_linear=s.num_layers * layer_linear,
            language_other=(1 if s.tie_word_embeddings else 2) * s.vocab_size * h
            + s.num_layers * layer_other
            + h,
            vision_linear=s.vision_depth * block_linear + merger_linear,
            vision_other=conv_in + downsample + position + norms,
        )

    @classmethod
    def from_headers(cls, tensors: Mapping[str, tuple[int, ...]]) -> ParamCounts:
        """From safetensors headers (tensor name -> shape): the checkpoint's own count.

        Linear = 2-D weights other than embeddings and the LM head (the layers vLLM's
        Fp8Config quantizes: LinearBase); vision = names under `visual`.
        """
        counts = {"language_linear": 0, "language_other": 0, "vision_linear": 0}
        counts["vision_other"] = 0
        for name, shape in tensors.items():
            n = math.prod(shape)
            part = "vision" if re.search(r"(^|\.)visual\.", name) else "language"
            linear = len(shape) == 2 and "embed" not in name and "lm_head" not in name
            counts[f"{part}_{'linear' if linear else 'other'}"] += n
        return cls(**counts)
