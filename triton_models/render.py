"""Strict rendering of Triton model configs, validated with Triton's own ModelConfig proto.

`string.Template.substitute` raises on any missing key (tensorrtllm_backend's fill_template.py
uses `safe_substitute`, which silently leaves `${x}` in the config); the rendered text is then
parsed into `inference.ModelConfig` (tritonclient's `model_config_pb2`, generated from Triton's
model_config.proto), so an unknown field or a malformed value fails here, not in Triton.

tritonclient is imported on first use (`config_proto`), not at module load: `autoglm build` runs
inside NVIDIA's Triton TensorRT-LLM container, which is not known to ship tritonclient, and
`skus`, `plan`, `quantize` and `compile` never validate a config.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from google.protobuf import text_format

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

TEMPLATES = Path(str(resources.files(__package__) / "templates"))


# Triton model names are directory names in the model repository; keep them path- and quote-safe
# (".." or "." would write outside or over the repository).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Characters that would break out of a pbtxt string literal (or make it multi-line).
_UNSAFE_IN_STRING = re.compile(r'["\\\n\r]')


def check_model_name(value: object, field: str = "model_name") -> None:
    """ValueError naming `field` unless value is a safe Triton model (directory) name."""
    if not isinstance(value, str) or not _MODEL_NAME.fullmatch(value) or set(value) <= {"."}:
        raise ValueError(f"{field}: {value!r} is not a valid Triton model name")


def check_config_string(field: str, value: str) -> None:
    """ValueError naming `field` unless value can sit inside a pbtxt string literal."""
    if not value or _UNSAFE_IN_STRING.search(value):
        raise ValueError(f"{field}: {value!r} must be non-empty and free of quotes/newlines")


class TemplateError(ValueError):
    """A template could not be rendered or does not give a valid Triton model config."""


def config_proto() -> ModuleType:
    """Triton's `model_config_pb2` (tritonclient[grpc]), imported where a config is validated."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise TemplateError(
            "validating a Triton model config needs tritonclient[grpc] (pyproject pins it), "
            f"which is not importable here: {exc}"
        ) from None
    return model_config_pb2


def render_text(template: str, values: Mapping[str, object], *, source: str = "template") -> str:
    """Substitute every `${name}`; a missing value or a leftover placeholder is an error."""
    try:
        text = string.Template(template).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise TemplateError(f"{source}: no value for placeholder ${{{exc.args[0]}}}") from None
    except ValueError as exc:
        raise TemplateError(f"{source}: {exc}") from None
    leftover = re.search(r"\$\{[^}]*\}", text)
    if leftover:
        raise TemplateError(f"{source}: placeholder {leftover.group(0)} left after rendering")
    return text


def parse_model_config(text: str, *, source: str = "config.pbtxt") -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text with Triton's ModelConfig proto (raises TemplateError)."""
    config = config_proto().ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise TemplateError(f"{source}: not a valid Triton ModelConfig: {exc}") from None
    return config


def render_config(
    template_path: Path, values: Mapping[str, object]
) -> tuple[str, model_config_pb2.ModelConfig]:
    """Render a config.pbtxt template strictly and validate it; returns (text, parsed)."""
    text = render_text(template_path.read_text(), values, source=str(template_path))
    return text, parse_model_config(text, source=str(template_path))
