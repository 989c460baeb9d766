"""LoRA adapters through the real façade (issue #25): real Triton running the CPU reference engine
(which applies adapters from the same `lora_*` tensors TensorRT-LLM takes), TLS, gRPC with the
client library, and the official OpenAI SDK.

The adapters are real PEFT adapters of SmolLM2 made in-process with non-zero weights
(build_engine/tiny_lora.py) and registered by the build side (`adapters.add`); one of them has
its converted weights changed afterwards, so its sha256 no longer matches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import openai
import pytest

from autoglm.build_engine import adapters as ad
from autoglm.build_engine.tiny_lora import make_adapter
from autoglm.client import AsyncClient, Client, ClientConfig, cli
from autoglm.client._config import ENV_VARS
from autoglm.client._exceptions import NotFoundError, PermissionDeniedError
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings import Settings, TlsSettings

from .conftest import MODEL, Facade, FacadeThread
from .openai_sdk import sdk

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"
GREEDY = {"temperature": 0.0, "max_tokens": 12}


@pytest.fixture(scope="module")
def adapters_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo") / "adapters"
    for seed, name in enumerate(("tenant-a", "tenant-b", "tampered"), start=1):
        source = make_adapter(model_dir, tmp_path_factory.mktemp("peft") / name, seed=seed, std=0.2)
        ad.add(root, name, base=MODEL, base_dir=model_dir, source=source)
    path = root / "tampered" / ad.LORA_WEIGHTS_FILE
    weights = np.load(path)
    weights[0, 0, 0] += 1
    np.save(path, weights)
    return root


@pytest.fixture(scope="module")
def lora_facade(
    triton: TritonProcess,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
    model_dir: Path,
    adapters_dir: Path,
    tenant_tokens: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Facade]:
    # The tenants' tokens are written before the façade reads the token file: one created later
    # is unknown until its next reload (up to TokenStore's reload_interval), and a test using it
    # at once failed UNAUTHENTICATED when run alone.
    del tenant_tokens
    settings = Settings(
        listen="127.0.0.1:0",
        triton_target=triton.grpc_target,
        models=(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir),),
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=token_store.path,
        engine_link=engine_link,
        health_interval_s=0.5,
        health_listen="127.0.0.1:0",
        openai_listen="127.0.0.1:0",
        adapters_dir=adapters_dir,
        audit_dir=tmp_path_factory.mktemp("lora-audit"),
    )
    thread = FacadeThread(settings)
    try:
        yield Facade(thread.port, f"127.0.0.1:{thread.port}", thread, settings)
    finally:
        thread.stop()


def config(facade: Facade, pki: DevPki, token: str) -> ClientConfig:
    return ClientConfig(
        endpoint=facade.endpoint,
        ca_cert=pki.ca_cert,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        token=token,
        model=MODEL,
    )


@pytest.fixture(scope="module")
def tenant_tokens(token_store: TokenStore) -> dict[str, str]:
    scopes = ["generate", "models:read"]
    return {
        name: token_store.create(f"{name}-svc", scopes, adapters=[name])[0]
        for name in ("tenant-a", "tenant-b")
    }


@pytest.fixture(scope="module")
def client(lora_facade: Facade, pki: DevPki, token: str) -> Iterator[Client]:
    with Client(config(lora_facade, pki, token)) as c:
        yield c


def text(client: Client, adapter: str | None = None) -> str:
    return client.generate(PROMPT, adapter=adapter, **GREEDY).text  # type: ignore[arg-type]


def test_adapter_output_differs_and_base_is_unchanged_afterwards(client: Client) -> None:
    base = text(client)
    with_a = text(client, "tenant-a")
    assert with_a != base
    assert text(client, "tenant-a") == with_a  # a later request: the task id alone, same output
    assert text(client) == base  # the adapter left nothing behind in the engine


async def test_two_tenants_adapters_at_once(
    lora_facade: Facade, pki: DevPki, tenant_tokens: dict[str, str], client: Client
) -> None:
    alone = {name: text(client, name) for name in tenant_tokens}
    assert alone["tenant-a"] != alone["tenant-b"]

    async def run(name: str) -> list[str]:
        async with AsyncClient(config(lora_facade, pki, tenant_tokens[name])) as tenant:
            done = await asyncio.gather(
                *(tenant.generate(PROMPT, adapter=name, **GREEDY) for _ in range(2))  # type: ignore[arg-type]
            )
            return [c.text for c in done]

    a, b = await asyncio.gather(run("tenant-a"), run("tenant-b"))
    assert a == [alone["tenant-a"]] * 2 and b == [alone["tenant-b"]] * 2


def test_unknown_adapter_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError, match="adapter: no adapter named 'nope'"):
        text(client, "nope")


def test_a_token_restricted_to_one_adapter_cannot_use_another(
    lora_facade: Facade, pki: DevPki, tenant_tokens: dict[str, str]
) -> None:
    with Client(config(lora_facade, pki, tenant_tokens["tenant-a"])) as tenant:
        assert [m.adapters for m in tenant.list_models()] == [("tenant-a",)]
        for other in ("tenant-b", "nope"):  # exists or not: the same refusal
            with pytest.raises(PermissionDeniedError, match="adapter"):
                text(tenant, other)
    with sdk(lora_facade, pki, tenant_tokens["tenant-a"]) as api:
        ids = {m.id: getattr(m, "parent", None) for m in api.models.list()}
        assert ids == {MODEL: None, "tenant-a": MODEL}
        with pytest.raises(openai.PermissionDeniedError) as err:
            api.completions.create(model="tenant-b", prompt=PROMPT, **GREEDY)  # type: ignore[arg-type]
        assert err.value.body["param"] == "model"  # type: ignore[index]


def test_the_tampered_adapter_is_refused_and_nothing_served(
    lora_facade: Facade, pki: DevPki, token: str, client: Client
) -> None:
    [model] = client.list_models()
    assert model.adapters == ("tenant-a", "tenant-b")
    with pytest.raises(NotFoundError, match="adapter: no adapter named 'tampered'"):
        text(client, "tampered")
    with sdk(lora_facade, pki, token) as api, pytest.raises(openai.NotFoundError):
        api.completions.create(model=f"{MODEL}:tampered", prompt=PROMPT, **GREEDY)  # type: ignore[arg-type]


def test_openai_names_reach_the_same_adapter(
    lora_facade: Facade, pki: DevPki, token: str, client: Client
) -> None:
    expected = text(client, "tenant-a")
    with sdk(lora_facade, pki, token) as api:
        for name in (f"{MODEL}:tenant-a", "tenant-a"):
            done = api.completions.create(model=name, prompt=PROMPT, **GREEDY)  # type: ignore[arg-type]
            assert done.choices[0].text == expected
        with pytest.raises(openai.NotFoundError) as err:
            api.completions.create(model=f"{MODEL}:nope", prompt=PROMPT, **GREEDY)  # type: ignore[arg-type]
        assert err.value.body["param"] == "model"  # type: ignore[index]


def test_the_audit_record_names_the_adapter(
    lora_facade: Facade, pki: DevPki, tenant_tokens: dict[str, str]
) -> None:
    with Client(config(lora_facade, pki, tenant_tokens["tenant-b"])) as tenant:
        tenant.generate(PROMPT, adapter="tenant-b", **GREEDY)  # type: ignore[arg-type]
        tenant.generate(PROMPT, **GREEDY)  # type: ignore[arg-type]
    assert lora_facade.settings.audit_dir is not None
    lora_facade.thread.running.generations.audit.flush(timeout=10)
    lines = (lora_facade.settings.audit_dir / "audit.jsonl").read_text().splitlines()
    mine = [r for r in map(json.loads, lines) if r["principal"] == "tenant-b-svc"]
    assert [r.get("adapter") for r in mine[-2:]] == ["tenant-b", None]


def test_the_cli_lists_each_callers_adapters(
    lora_facade: Facade,
    pki: DevPki,
    token: str,
    tenant_tokens: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`autoglm-client models`: the ADAPTERS column and `--json` show the adapters this token
    may use (the tampered one is not served, a tenant's token sees its own)."""
    for variable in ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)

    def models(token: str, *options: str) -> str:
        profile = tmp_path / "client.json"
        fields = asdict(config(lora_facade, pki, token))
        settings = {k: str(fields[k]) for k in ("endpoint", "ca_cert", "client_cert", "client_key")}
        profile.write_text(json.dumps({**settings, "token": token}))
        assert cli.main(["models", "--config", str(profile), *options]) == 0
        return capsys.readouterr().out

    header, row = (line.split("\t") for line in models(token).splitlines())
    assert (header[-1], row[0], row[-1]) == ("ADAPTERS", MODEL, "tenant-a,tenant-b")
    [listed] = json.loads(models(token, "--json"))
    assert listed["adapters"] == ["tenant-a", "tenant-b"]
    [_, row] = (line.split("\t") for line in models(tenant_tokens["tenant-a"]).splitlines())
    assert row[-1] == "tenant-a"
