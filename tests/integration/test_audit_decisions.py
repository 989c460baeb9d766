"""Every decision is audited, against the real façade: allowed and refused calls on both front
doors, with the caller's address and the reason; failing closed when the log cannot be written;
the chain's head anchored outside it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from autoglm.client import Client, ClientConfig, ResourceExhaustedError
from autoglm.server.devstack.pki import DevPki
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.limits import PrincipalLimits
from autoglm.v1 import text_generation_pb2 as pb

from .conftest import MODEL, Facade, FacadeThread, scrape, secure_channel
from .openai_sdk import base_url, ssl_context

pytestmark = pytest.mark.integration

LIST = "/autoglm.v1.TextGeneration/ListModels"
COUNT = "/autoglm.v1.TextGeneration/CountTokens"
GENERATE = "/autoglm.v1.TextGeneration/Generate"


def _records(facade: Facade) -> list[dict[str, Any]]:
    assert facade.settings.audit_dir is not None
    facade.thread.running.generations.audit.flush(timeout=10)
    text = (facade.settings.audit_dir / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _new_record(
    facade: Facade, after: int, match: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first record past index `after` that `match`es, waited for: a call's record is
    queued when grpc reports the call done, a moment after the caller has its answer."""
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in _records(facade)[after:] if match(r)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "no such audit record"
        time.sleep(0.05)


def _call(facade: Facade, pki: DevPki, method: str, request: Any, token: str | None) -> Any:
    md = [("authorization", f"Bearer {token}")] if token is not None else []
    with secure_channel(facade.endpoint, pki) as channel:
        stub = channel.unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=lambda b: b,
        )
        return stub(request, metadata=md, timeout=10)


def _new_token(
    facade: Facade, pki: DevPki, store: TokenStore, name: str, scopes: list[str], **kw: Any
) -> tuple[str, Any]:
    """A token the façade knows: it re-reads the token file at most every 0.5 s, so a new
    token is "unknown" until then (the waiting calls leave records before the test's own)."""
    token, record = store.create(name, scopes, **kw)
    deadline = time.monotonic() + 10
    while True:
        try:
            _call(facade, pki, LIST, pb.ListModelsRequest(), token)
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                break
            assert time.monotonic() < deadline, exc.details()
            time.sleep(0.05)
    _new_record(facade, 0, lambda r: r["principal"] == name)  # before the test counts its own
    return token, record


@pytest.mark.parametrize(
    ("token_of", "code", "reason"),
    [
        (lambda _t: None, grpc.StatusCode.UNAUTHENTICATED, "missing"),
        (lambda _t: "agm_0123456789ab_" + "x" * 43, grpc.StatusCode.UNAUTHENTICATED, "unknown"),
        (lambda t: t + "x", grpc.StatusCode.UNAUTHENTICATED, "malformed"),
    ],
    ids=["missing", "unknown", "malformed"],
)
def test_auth_refusals_are_audited_with_reason_and_address(
    facade: Facade,
    pki: DevPki,
    token: str,
    token_of: Callable[[str], str | None],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    before = len(_records(facade))
    request = pb.GenerateRequest(model=MODEL, prompt="hi")
    with pytest.raises(grpc.RpcError) as err:
        _call(facade, pki, GENERATE, request, token_of(token))
    assert err.value.code() == code
    record = _new_record(facade, before, lambda r: r["rpc"] == "Generate")
    assert (record["status"], record["reason"]) == (code.name, reason)
    assert record["peer"].startswith("ipv4:127.0.0.1:")
    assert record["principal"] is None and record["token_id"] is None


def test_scope_refusal_names_the_principal(
    facade: Facade, pki: DevPki, token_store: TokenStore
) -> None:
    reader, record = _new_token(facade, pki, token_store, "audit-reader", ["models:read"])
    before = len(_records(facade))
    with pytest.raises(grpc.RpcError) as err:
        _call(facade, pki, GENERATE, pb.GenerateRequest(model=MODEL, prompt="hi"), reader)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    entry = _new_record(facade, before, lambda r: r["principal"] == "audit-reader")
    assert (entry["rpc"], entry["status"], entry["reason"]) == (
        "Generate",
        "PERMISSION_DENIED",
        "scope",
    )
    assert entry["token_id"] == record.id


def test_list_models_and_count_tokens_are_audited(
    facade: Facade, pki: DevPki, token_store: TokenStore
) -> None:
    auditor, record = _new_token(
        facade, pki, token_store, "audit-counter", ["generate", "models:read"]
    )
    before = len(_records(facade))
    _call(facade, pki, LIST, pb.ListModelsRequest(), auditor)
    _call(facade, pki, COUNT, pb.CountTokensRequest(model=MODEL, prompt="one two three"), auditor)
    listed = _new_record(facade, before, lambda r: r["rpc"] == "ListModels")
    counted = _new_record(facade, before, lambda r: r["rpc"] == "CountTokens")
    for entry in (listed, counted):
        assert entry["status"] == "OK" and entry["reason"] is None
        assert (entry["principal"], entry["token_id"]) == ("audit-counter", record.id)
        assert entry["cert_identity"]  # mTLS: the client certificate's identity
        assert entry["peer"].startswith("ipv4:127.0.0.1:")
    assert counted["model"] == MODEL and counted["prompt_tokens"] > 0
    # One record per call: the generation path does not write a second one.
    later = _records(facade)[before:]
    assert sum(r["principal"] == "audit-counter" for r in later) == 2


def test_a_limit_refusal_names_the_limit(
    client_config: ClientConfig, facade: Facade, pki: DevPki, token_store: TokenStore
) -> None:
    small, _ = _new_token(
        facade,
        pki,
        token_store,
        "audit-small",
        ["generate"],
        limits=PrincipalLimits(max_tokens_per_request=2),
    )
    before = len(_records(facade))
    with (
        Client(dataclasses.replace(client_config, token=small)) as c,
        pytest.raises(ResourceExhaustedError, match="exceeds"),
    ):
        c.generate("hi", max_tokens=5)
    entry = _new_record(facade, before, lambda r: r["principal"] == "audit-small")
    assert (entry["status"], entry["reason"]) == ("RESOURCE_EXHAUSTED", "max_tokens")
    assert entry["peer"].startswith("ipv4:127.0.0.1:")


def test_health_checks_are_not_audited(facade: Facade, pki: DevPki) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    before = len(_records(facade))
    with secure_channel(facade.endpoint, pki) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        # A call that is audited, after it: its record proves the check's would have landed.
        with pytest.raises(grpc.RpcError):  # refused (a bad token): only its record matters
            channel.unary_unary(LIST)(b"", timeout=5, metadata=[("authorization", "Bearer x")])
    _new_record(facade, before, lambda r: r["rpc"] == "ListModels")
    assert not any(r["rpc"] == "Check" for r in _records(facade)[before:])


def _http(facade: Facade, pki: DevPki, path: str, token: str | None, body: bytes | None) -> int:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base_url(facade) + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ssl_context(pki), timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_http_calls_are_audited_allowed_and_refused(
    facade: Facade, pki: DevPki, token_store: TokenStore
) -> None:
    web, record = _new_token(facade, pki, token_store, "audit-web", ["generate", "models:read"])
    before = len(_records(facade))
    assert _http(facade, pki, "/models", None, None) == 401
    refused = _new_record(facade, before, lambda r: r["rpc"] == "openai:models.list")
    assert (refused["status"], refused["reason"]) == ("UNAUTHENTICATED", "missing")
    assert refused["peer"].startswith("ipv4:127.0.0.1:")

    assert _http(facade, pki, "/models", web, None) == 200
    listed = _new_record(facade, before, lambda r: r["principal"] == "audit-web")
    assert (listed["rpc"], listed["status"], listed["token_id"]) == (
        "openai:models.list",
        "OK",
        record.id,
    )

    bad = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": 3}]}).encode()
    assert _http(facade, pki, "/chat/completions", web, bad) == 400
    invalid = _new_record(
        facade, before, lambda r: r["rpc"] == "openai:chat.completions" and r["status"] != "OK"
    )
    assert invalid["status"] == "INVALID_ARGUMENT"
    assert invalid["reason"].startswith("messages[0].content")
    assert invalid["peer"].startswith("ipv4:127.0.0.1:")
    later = [r for r in _records(facade)[before:] if r["principal"] == "audit-web"]
    assert len(later) == 2  # one record per call


# --- a façade whose audit log cannot be written, and one that anchors its chain ------------


@pytest.fixture
def custom_facade(facade: Facade, tmp_path: Path) -> Iterator[Callable[..., Facade]]:
    """A second façade like the package one (same Triton, PKI, tokens), with other settings."""
    started: list[FacadeThread] = []

    def start(**changes: Any) -> Facade:
        settings = dataclasses.replace(
            facade.settings, openai_listen="127.0.0.1:0", health_listen=None, **changes
        )
        thread = FacadeThread(settings)
        started.append(thread)
        return Facade(thread.port, f"127.0.0.1:{thread.port}", thread, settings)

    yield start
    for thread in started:
        if thread.loop.is_running():
            thread.stop()


def test_required_audit_fails_closed_when_the_log_cannot_be_written(
    custom_facade: Callable[..., Facade], pki: DevPki, token: str, tmp_path: Path
) -> None:
    """/dev/full stands in for a full volume: every append fails with ENOSPC."""
    audit_dir = tmp_path / "full"
    audit_dir.mkdir()
    (audit_dir / "audit.jsonl").symlink_to("/dev/full")
    strict = custom_facade(audit_dir=audit_dir, audit_required=True)
    metrics = strict.metrics_url
    # The first call is answered: its record is the one lost, and counted.
    _call(strict, pki, LIST, pb.ListModelsRequest(), token)
    deadline = time.monotonic() + 10
    while scrape(metrics, "autoglm_audit_write_failures") < 1:
        assert time.monotonic() < deadline, "the failed write was not counted"
        time.sleep(0.05)
    for method, request in [
        (LIST, pb.ListModelsRequest()),
        (GENERATE, pb.GenerateRequest(model=MODEL, prompt="hi")),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            _call(strict, pki, method, request, token)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "audit log unavailable" in (err.value.details() or "")
    assert _http(strict, pki, "/models", token, None) == 503
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert _http(strict, pki, "/chat/completions", token, body) == 503
    assert scrape(metrics, "autoglm_audit_write_failures") >= 5


def test_the_chain_head_is_anchored_and_truncation_detected(
    custom_facade: Callable[..., Facade], pki: DevPki, token: str, tmp_path: Path
) -> None:
    audit_dir, anchor = tmp_path / "audit", tmp_path / "other-volume" / "anchor.jsonl"
    anchored = custom_facade(
        audit_dir=audit_dir, audit_anchor=str(anchor), audit_anchor_interval_s=0.2
    )
    for _ in range(3):
        _call(anchored, pki, LIST, pb.ListModelsRequest(), token)
    deadline = time.monotonic() + 10
    while not anchor.exists() or json.loads(anchor.read_text().splitlines()[-1])["seq"] < 3:
        assert time.monotonic() < deadline, "the head was not anchored"
        time.sleep(0.05)
    anchored.thread.stop()  # anchors the final head once more (after the writer drained)

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "autoglm.server.cli", "audit", "verify", str(audit_dir), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ,
        )

    ok = verify("--anchor", str(anchor))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    log = audit_dir / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))  # the newest record cut off
    assert verify().returncode == 0  # the chain alone cannot tell
    cut = verify("--anchor", str(anchor))
    assert cut.returncode == 1 and "truncated" in cut.stdout


def test_probes_for_methods_and_routes_are_audited(facade: Facade, pki: DevPki) -> None:
    before = len(_records(facade))
    with secure_channel(facade.endpoint, pki) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/admin.v1.Secrets/Dump")(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    probed = _new_record(facade, before, lambda r: r["rpc"] == "/admin.v1.Secrets/Dump")
    assert (probed["status"], probed["reason"]) == ("UNIMPLEMENTED", "method")
    assert probed["peer"].startswith("ipv4:127.0.0.1:")
    assert _http(facade, pki, "/embeddings", None, b"{}") == 404
    route = _new_record(facade, before, lambda r: r["rpc"] == "openai:POST /v1/embeddings")
    assert (route["status"], route["reason"]) == ("NOT_FOUND", "route")
    assert route["peer"].startswith("ipv4:127.0.0.1:")
