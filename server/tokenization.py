"""Prompt encoding owned by the façade: HF `tokenizers` plus the model's own chat template.

The chat template is rendered the way transformers' `apply_chat_template` does (a sandboxed
Jinja2 environment with trim_blocks/lstrip_blocks, `raise_exception`, `tojson`), without
importing transformers into the façade.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


class ChatTemplateError(ValueError):
    """The conversation cannot be rendered with the model's chat template."""


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    images: int = 0  # images of this turn: one placeholder each, before the text (render_chat)


def content_with_images(text: str, images: int, placeholder: str) -> str:
    """A turn's text with its images' placeholders, as vLLM renders a turn for a chat template
    in its "string" content format (the model authors' `--chat-template-content-format
    string`): one placeholder per image, then the text, joined by newlines; the placeholders
    alone when there is no text (`_get_full_multimodal_text_prompt`, vllm/entrypoints/
    chat_utils.py, vllm-project/vllm 001eadc)."""
    return "\n".join([placeholder] * images + ([text] if text else []))


def expand_image_tokens(ids: list[int], image_token_id: int, counts: Sequence[int]) -> list[int]:
    """`ids` with the i-th `image_token_id` repeated `counts[i]` times, as the engine expands an
    image's token into its image tokens; ValueError when the numbers disagree."""
    if ids.count(image_token_id) != len(counts):
        raise ValueError(
            f"{ids.count(image_token_id)} image tokens in the prompt for {len(counts)} images"
        )
    out: list[int] = []
    turn = iter(counts)
    for t in ids:
        if t == image_token_id:
            out.extend([t] * next(turn))
        else:
            out.append(t)
    return out


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # The keywords of transformers' chat-template tojson filter.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def load_chat_template(model_dir: Path) -> str | None:
    """The chat template of an HF folder: chat_template.jinja, else tokenizer_config.json."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _special_tokens(model_dir: Path) -> tuple[str, str]:
    """bos/eos token strings from tokenizer_config.json (plain or AddedToken-style dicts)."""
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}

    def text(value: object) -> str:
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else ""

    return text(cfg.get("bos_token")), text(cfg.get("eos_token"))


class PromptEncoder:
    """Turns a prompt or a conversation into token ids, and ids back into nothing else."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None,
        *,
        bos: str = "",
        eos: str = "",
        image_placeholder: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self._bos, self._eos = bos, eos
        self.image_placeholder = image_placeholder  # "" for a text-only model
        self._template = None
        if chat_template is not None:
            # As transformers' chat-template environment: loop controls, raise_exception,
            # strftime_now (Llama 3.x templates call it) and a tojson that keeps non-ASCII.
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            env.filters["tojson"] = _tojson
            self._template = env.from_string(chat_template)

    @classmethod
    def from_model_dir(cls, model_dir: Path, *, image_placeholder: str = "") -> PromptEncoder:
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        bos, eos = _special_tokens(model_dir)
        return cls(
            tok,
            load_chat_template(model_dir),
            bos=bos,
            eos=eos,
            image_placeholder=image_placeholder,
        )

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def encode_prompt(self, text: str) -> list[int]:
        # add_special_tokens=True applies the tokenizer's own post-processor (BOS where the
        # model wants one), as transformers' tokenizer(text) does.
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def render_chat(self, messages: Sequence[Message]) -> str:
        if self._template is None:
            raise ChatTemplateError("this model has no chat template; send `prompt` instead")
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": self._content(m)} for m in messages],
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except ChatTemplateError:
            raise
        except Exception as exc:  # any error inside the template is the conversation's problem
            raise ChatTemplateError(f"chat template failed: {exc}") from None

    def _content(self, m: Message) -> str:
        if not m.images:
            return m.content
        if not self.image_placeholder:
            raise ChatTemplateError("this model does not accept images")
        return content_with_images(m.content, m.images, self.image_placeholder)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        # The template already holds every special token: encoding must not add more
        # (transformers' apply_chat_template(tokenize=True) does the same).
        return self.tokenizer.encode(self.render_chat(messages), add_special_tokens=False).ids
