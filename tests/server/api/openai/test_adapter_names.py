"""The OpenAI door's LoRA adapter names over real HTTP (uvicorn on loopback, plaintext) with the
real routes, token store and Generations, and a stand-in engine: /v1/models lists adapters with
their base as `parent`; `BASE:ADAPTER` and the adapter's own name reach the engine as its task;
refusals name `model`. The real engine and TLS: tests/integration/test_lora_facade.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoglm.server.adapters import AdapterSet
from autoglm.server.api.calls import Generations
from autoglm.server.api.openai.http_server import RunningHttp, start_http
from autoglm.server.api.openai.routes import FrontDoor
from autoglm.server.models import ModelRegistry, ModelSpec, load_model
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.limits import Admission, LimitSettings
from autoglm.server.telemetry.metrics import FacadeMetrics

from ..test_adapter_requests import Engine, write_adapter

SCOPES = ["generate", "models:read"]


@pytest.fixture
async def door(model_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[RunningHttp, Any, dict]]:  # type: ignore[type-arg]
    models = [
        load_model(ModelSpec(name=n, triton_model=n, tokenizer_dir=model_dir)) for n in ("m", "o")
    ]
    adapters = AdapterSet(
        [write_adapter(tmp_path, "a", "m", 11), write_adapter(tmp_path, "b", "m", 12)]
    )
    registry = ModelRegistry(models, adapters)
    engine = Engine()
    generations = Generations(
        registry,
        engine,  # type: ignore[arg-type]
        metrics=FacadeMetrics(registry.names(), process_metrics=False),
        admission=Admission(LimitSettings()),
    )
    store = TokenStore(tmp_path / "tokens.json")
    tokens = {
        "ops": store.create("ops", SCOPES)[0],
        "tenant-a": store.create("tenant-a", SCOPES, adapters=["a"])[0],
    }
    front = FrontDoor(
        generations=generations,
        tokens=store,
        max_body_bytes=1 << 20,
        ready=lambda: True,
        on_auth_failure=lambda _reason: None,
    )
    running = await start_http(front, "127.0.0.1:0", tls=None, require_client_cert=False)
    try:
        yield running, engine, tokens
    finally:
        await running.stop(0.5)
        generations.close()


async def call(
    running: RunningHttp,
    token: str,
    method: str,
    path: str,
    body: dict | None = None,  # type: ignore[type-arg]
) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}/v1") as http:
        resp = await http.request(
            method, path, json=body, headers={"authorization": f"Bearer {token}"}
        )
        return resp.status_code, resp.json()


def completion(model: str) -> dict:  # type: ignore[type-arg]
    return {"model": model, "prompt": "hi", "max_tokens": 1}


async def test_models_lists_adapters_with_their_base(door: tuple) -> None:  # type: ignore[type-arg]
    running, _, tokens = door
    _, listed = await call(running, tokens["ops"], "GET", "/models")
    entries = [(m["id"], m.get("parent")) for m in listed["data"]]
    assert entries == [("m", None), ("a", "m"), ("b", "m"), ("o", None)]
    _, mine = await call(running, tokens["tenant-a"], "GET", "/models")
    assert [(m["id"], m.get("parent")) for m in mine["data"]] == [
        ("m", None),
        ("a", "m"),
        ("o", None),
    ]
    status, one = await call(running, tokens["ops"], "GET", "/models/m:b")
    assert (status, one["id"], one["parent"]) == (200, "m:b", "m")


async def test_both_names_reach_the_adapters_task(door: tuple) -> None:  # type: ignore[type-arg]
    running, engine, tokens = door
    for name in ("m:a", "a"):
        status, body = await call(running, tokens["ops"], "POST", "/completions", completion(name))
        assert status == 200, body
        assert body["model"] == name  # the name the caller used, echoed
    await call(running, tokens["ops"], "POST", "/completions", completion("m"))
    assert [r.lora and r.lora.task_id for r in engine.requests] == [11, 11, None]


@pytest.mark.parametrize(
    ("token", "model", "status"),
    [
        ("ops", "m:nope", 404),  # no such adapter
        ("ops", "o:a", 400),  # an adapter of another base
        ("tenant-a", "m:b", 403),  # another tenant's
        ("tenant-a", "b", 403),
        ("tenant-a", "nope", 403),  # exists or not: the same answer to a restricted token
    ],
)
async def test_refusals_name_model(door: tuple, token: str, model: str, status: int) -> None:  # type: ignore[type-arg]
    running, engine, tokens = door
    got, body = await call(running, tokens[token], "POST", "/completions", completion(model))
    assert (got, body["error"]["param"]) == (status, "model")
    assert engine.requests == []
