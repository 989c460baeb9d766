"""Client unit-test fixtures: an environment with no AUTOGLM_* settings and an empty XDG home,
so that a developer's own profile (`~/.config/autoglm/client.json`) cannot leak into tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autoglm.client._config import CONFIG_ENV, ENV_VARS

TOKEN = "s3cr3t-token-value-that-must-never-be-printed"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in (CONFIG_ENV, *ENV_VARS.values()):
        monkeypatch.delenv(var, raising=False)
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    return xdg


@pytest.fixture
def write_profile(tmp_path: Path) -> Callable[..., Path]:
    """Write a profile JSON (like `autoglm dev` does) and return its path."""

    def write(data: dict[str, Any], path: Path | None = None) -> Path:
        path = path or tmp_path / "profile" / "client.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data), encoding="utf-8")
        return path

    return write
