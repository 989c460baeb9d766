"""`event_loop`: the loop both front doors run on, and what settings refuse."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.server.app import run_event_loop
from autoglm.server.models import ModelSpec
from autoglm.server.settings import Settings, SettingsError


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize(("kind", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_the_named_loop_runs(kind: str, module: str) -> None:
    assert run_event_loop(loop_module(), kind).startswith(module)


def test_an_unknown_loop_is_refused() -> None:
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target="127.0.0.1:8001",
        models=(ModelSpec(name="m", triton_model="m", tokenizer_dir=Path("/tmp")),),
        insecure_dev=True,
    )
    settings.validate()
    with pytest.raises(SettingsError, match="event_loop: must be one of asyncio, uvloop"):
        replace(settings, event_loop="trio").validate()
