"""PromptEncoder: the façade's tokenizer and chat template must agree with transformers exactly."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from autoglm.server.tokenization import (
    ChatTemplateError,
    Message,
    PromptEncoder,
    load_chat_template,
)

CONVERSATIONS: dict[str, list[Message]] = {
    "user_only": [Message("user", "What is the capital of France?")],
    "with_system": [
        Message("system", "You answer in one word."),
        Message("user", "Capital of Italy?"),
    ],
    "multi_turn": [
        Message("system", "Be brief."),
        Message("user", "Hi!"),
        Message("assistant", "Hello. How can I help?"),
        Message("user", "Tell me a joke."),
    ],
    "unicode_cjk": [
        Message("user", "你好，世界！日本語もOK。한국어 🙂 café naïve — «quotes»"),
    ],
    "whitespace_and_braces": [
        Message("system", "  leading spaces\n\ttabs\n\n"),
        Message("user", "{{ not a template }} {% raw %} $x ${y}"),
    ],
    "empty_content": [Message("user", "")],
    "assistant_first": [Message("assistant", "I start."), Message("user", "ok")],
}


def as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def ids_of(result: Any) -> list[int]:
    """apply_chat_template(tokenize=True): transformers 5 returns a BatchEncoding/dict."""
    if isinstance(result, Mapping) or hasattr(result, "keys"):
        result = result["input_ids"]
    return [int(t) for t in result]


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> PromptEncoder:
    return PromptEncoder.from_model_dir(model_dir)


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Tokenizer:
    """The model's tokenizer.json loaded once (~0.2 s a load): the reference, and shared by the
    encoders that test template handling rather than folder loading."""
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(model_dir)


def model_copy(model_dir: Path, dest: Path, template: str | None) -> Path:
    """A model folder with the real tokenizer and ``template`` as chat_template.jinja."""
    dest.mkdir()
    (dest / "tokenizer.json").symlink_to(model_dir / "tokenizer.json")
    for name in ("tokenizer_config.json", "config.json"):
        shutil.copyfile(model_dir / name, dest / name)
    if template is not None:
        (dest / "chat_template.jinja").write_text(template)
    return dest


# --- plain prompts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["The capital of France is", "", " leading space", "你好，世界 🙂", "a\n\nb", "<|im_start|>"],
)
def test_encode_prompt_equals_tokenizers(
    encoder: PromptEncoder, reference: Tokenizer, text: str
) -> None:
    assert encoder.encode_prompt(text) == reference.encode(text, add_special_tokens=True).ids


@pytest.mark.parametrize("text", ["The capital of France is", "你好 🙂", "x  y"])
def test_encode_prompt_equals_transformers(
    encoder: PromptEncoder, hf_tokenizer: Any, text: str
) -> None:
    assert encoder.encode_prompt(text) == hf_tokenizer(text)["input_ids"]


# --- chat template: parity with transformers -------------------------------------------------


def test_real_model_has_a_chat_template(encoder: PromptEncoder) -> None:
    assert encoder.has_chat_template


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_render_chat_equals_transformers(
    encoder: PromptEncoder, hf_tokenizer: Any, name: str
) -> None:
    messages = CONVERSATIONS[name]
    expected = hf_tokenizer.apply_chat_template(
        as_dicts(messages), tokenize=False, add_generation_prompt=True
    )
    assert encoder.render_chat(messages) == expected


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_encode_chat_equals_transformers(
    encoder: PromptEncoder, hf_tokenizer: Any, name: str
) -> None:
    messages = CONVERSATIONS[name]
    expected = hf_tokenizer.apply_chat_template(
        as_dicts(messages), tokenize=True, add_generation_prompt=True
    )
    assert encoder.encode_chat(messages) == ids_of(expected)


def test_render_chat_opens_the_assistant_turn(encoder: PromptEncoder) -> None:
    text = encoder.render_chat(CONVERSATIONS["with_system"])
    assert text.endswith("<|im_start|>assistant\n")
    # The given system message replaces SmolLM2's default one.
    assert "named SmolLM" not in text
    assert "named SmolLM" in encoder.render_chat(CONVERSATIONS["user_only"])


def test_encode_chat_adds_no_extra_special_tokens(encoder: PromptEncoder) -> None:
    ids = encoder.encode_chat(CONVERSATIONS["user_only"])
    rendered = encoder.render_chat(CONVERSATIONS["user_only"])
    assert ids == encoder.tokenizer.encode(rendered, add_special_tokens=False).ids
    assert ids[0] == encoder.tokenizer.token_to_id("<|im_start|>")


# --- templates and errors --------------------------------------------------------------------


def test_raise_exception_becomes_chat_template_error(reference: Tokenizer) -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversation must start with a user turn') }}"
        "{% endif %}{{ messages[0]['content'] }}"
    )
    encoder = PromptEncoder(reference, template)
    assert encoder.render_chat([Message("user", "ok")]) == "ok"
    with pytest.raises(ChatTemplateError, match="must start with a user turn"):
        encoder.render_chat([Message("system", "s"), Message("user", "u")])
    with pytest.raises(ChatTemplateError):
        encoder.encode_chat([Message("assistant", "a")])


def test_raise_exception_from_a_model_folder(model_dir: Path, tmp_path: Path) -> None:
    folder = model_copy(model_dir, tmp_path / "m", "{{ raise_exception('no chat here') }}")
    encoder = PromptEncoder.from_model_dir(folder)
    assert encoder.has_chat_template
    with pytest.raises(ChatTemplateError, match="no chat here"):
        encoder.render_chat([Message("user", "hi")])


def test_template_runtime_error_becomes_chat_template_error(reference: Tokenizer) -> None:
    # Undefined attribute access on an undefined value is a jinja2 UndefinedError.
    template = "{{ messages[5]['content'].upper() }}"
    encoder = PromptEncoder(reference, template)
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        encoder.render_chat([Message("user", "hi")])


def test_template_is_sandboxed(reference: Tokenizer) -> None:
    template = "{{ messages.__class__.__mro__ }}"
    encoder = PromptEncoder(reference, template)
    with pytest.raises(ChatTemplateError):
        encoder.render_chat([Message("user", "hi")])


def test_tojson_keeps_unicode_and_html_like_transformers(
    model_dir: Path, tmp_path: Path, reference: Tokenizer, hf_tokenizer: Any
) -> None:
    template = "{% for m in messages %}{{ m | tojson }}\n{% endfor %}"
    folder = model_copy(model_dir, tmp_path / "m", template)
    messages = [Message("user", '<b>café</b> 你好 & "q"')]
    got = PromptEncoder(reference, load_chat_template(folder)).render_chat(messages)
    assert got == hf_render(hf_tokenizer, template, messages)
    assert json.loads(got.strip()) == as_dicts(messages)[0]


def test_folder_without_template(model_dir: Path, tmp_path: Path, reference: Tokenizer) -> None:
    folder = model_copy(model_dir, tmp_path / "m", None)
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
    assert load_chat_template(folder) is None
    encoder = PromptEncoder.from_model_dir(folder)
    assert not encoder.has_chat_template
    with pytest.raises(ChatTemplateError, match="prompt"):
        encoder.render_chat([Message("user", "hi")])
    with pytest.raises(ChatTemplateError):
        encoder.encode_chat([Message("user", "hi")])
    # Plain prompts still work.
    assert encoder.encode_prompt("hi") == reference.encode("hi").ids


def test_folder_with_only_tokenizer_json(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "tokenizer.json").symlink_to(model_dir / "tokenizer.json")
    assert load_chat_template(folder) is None


def test_template_from_tokenizer_config(model_dir: Path, tmp_path: Path) -> None:
    folder = model_copy(model_dir, tmp_path / "m", None)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "CFG{{ messages[0]['content'] }}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert PromptEncoder.from_model_dir(folder).render_chat([Message("user", "x")]) == "CFGx"
    # chat_template.jinja wins over tokenizer_config.json, as in transformers 5.
    (folder / "chat_template.jinja").write_text("JINJA{{ messages[0]['content'] }}")
    assert load_chat_template(folder) == "JINJA{{ messages[0]['content'] }}"


def test_non_string_template_in_tokenizer_config_is_ignored(
    model_dir: Path, tmp_path: Path
) -> None:
    # Named templates (a list of {name, template}) are not supported: treated as "no template".
    folder = model_copy(model_dir, tmp_path / "m", None)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "default", "template": "x"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_chat_template(folder) is None


# --- transformers compatibility gaps (bugs) --------------------------------------------------


def hf_render(hf_tokenizer: Any, template: str, messages: list[Message]) -> str:
    """transformers' rendering of ``template`` (its own Jinja environment and special tokens)."""
    return hf_tokenizer.apply_chat_template(
        as_dicts(messages), chat_template=template, tokenize=False
    )


def ours_and_hf(
    model_dir: Path, tmp_path: Path, hf_tokenizer: Any, template: str, messages: list[Message]
) -> tuple[str, str]:
    """(PromptEncoder loaded from a folder holding ``template``, transformers) renderings."""
    expected = hf_render(hf_tokenizer, template, messages)
    folder = model_copy(model_dir, tmp_path / "m", template)
    return PromptEncoder.from_model_dir(folder).render_chat(messages), expected


def test_bos_and_eos_tokens_are_rendered(
    model_dir: Path, tmp_path: Path, hf_tokenizer: Any
) -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    got, expected = ours_and_hf(
        model_dir, tmp_path, hf_tokenizer, template, [Message("user", "Hi")]
    )
    assert expected == "<|im_start|>Hi<|im_end|>"
    assert got == expected


def test_loop_controls_are_supported(model_dir: Path, tmp_path: Path, hf_tokenizer: Any) -> None:
    template = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    messages = [Message("user", "a"), Message("user", "b")]
    got, expected = ours_and_hf(model_dir, tmp_path, hf_tokenizer, template, messages)
    assert got == expected == "a"


def test_strftime_now_is_available(model_dir: Path, tmp_path: Path, hf_tokenizer: Any) -> None:
    template = "{{ strftime_now('%Y') | length }}"
    got, expected = ours_and_hf(model_dir, tmp_path, hf_tokenizer, template, [Message("user", "a")])
    assert got == expected == "4"


def test_tojson_accepts_transformers_keywords(reference: Tokenizer, hf_tokenizer: Any) -> None:
    template = "{{ messages[0] | tojson(sort_keys=True, separators=(',', ':')) }}"
    messages = [Message("user", "é")]
    expected = hf_render(hf_tokenizer, template, messages)
    assert expected == '{"content":"é","role":"user"}'
    assert PromptEncoder(reference, template).render_chat(messages) == expected
