"""Client retries against the real façade and the real Triton.

* A client that calls before the façade listens (a restart, a rollout) gets its answer once
  the façade is up, by retrying UNAVAILABLE; sync and async.
* A stream cut after its first message (Triton SIGKILLed mid-stream) is not retried: the caller
  gets UnavailableError after the tokens it already had, and the façade's audit log shows one
  attempt. Calls that keep failing give up after `max_attempts`, each attempt audited under the
  one request id, and never run past the caller's timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from autoglm.client import (
    AsyncClient,
    Client,
    ClientConfig,
    DeadlineExceededError,
    RetryPolicy,
    UnavailableError,
)
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings import Settings, TlsSettings
from autoglm.triton_models.repository import CpuEngineConfig, render_cpu_model

from .conftest import LONG_PROMPT, MODEL, FacadeThread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Patient enough for a façade that takes a few seconds to start on a busy 2-core machine.
PATIENT = RetryPolicy(max_attempts=100, initial_backoff=0.1, max_backoff=0.5)


def _settings(
    listen: str,
    triton_target: str,
    model_dir: Path,
    pki: DevPki,
    token_store: TokenStore,
    engine_link: EngineLink,
    audit_dir: Path | None = None,
) -> Settings:
    return Settings(
        listen=listen,
        triton_target=triton_target,
        models=(ModelSpec(name=MODEL, triton_model=MODEL, tokenizer_dir=model_dir),),
        tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
        token_store=token_store.path,
        engine_link=engine_link,
        health_interval_s=0.25,
        metrics_listen=None,
        audit_dir=audit_dir,
    )


def _client_config(endpoint: str, pki: DevPki, token: str, retry: RetryPolicy) -> ClientConfig:
    return ClientConfig(
        endpoint=endpoint,
        ca_cert=pki.ca_cert,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        token=token,
        model=MODEL,
        retry=retry,
    )


class _RetryLog(logging.Handler):
    """Collects the client's retry log lines; `retried` is set at the first one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.retried = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if " attempt " in message and "retrying" in message:
            self.retried.set()


@contextmanager
def _retry_log() -> Iterator[_RetryLog]:
    logger = logging.getLogger("autoglm.client")
    handler, level = _RetryLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def _late_facade(make_settings: Callable[[str], Settings], log: _RetryLog) -> Iterator[str]:
    """An endpoint that refuses connections until the client has failed once, then serves.

    The port is held by a bound socket that does not listen (connections are refused) and is
    handed to the façade after the client's first failed attempt: no guessing of free ports and
    no sleeping, the façade starts on the client's evidence that it had to retry.
    """
    placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    placeholder.bind(("127.0.0.1", 0))
    endpoint = f"127.0.0.1:{placeholder.getsockname()[1]}"
    started: list[FacadeThread] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            if not log.retried.wait(60):
                raise AssertionError("the client never retried")
            placeholder.close()
            started.append(FacadeThread(make_settings(endpoint)))
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        yield endpoint
    finally:
        starter.join(70)
        placeholder.close()
        for facade in started:
            facade.stop()
    assert not failures, failures


def test_call_made_before_the_facade_listens_succeeds(
    triton: TritonProcess,
    model_dir: Path,
    pki: DevPki,
    token_store: TokenStore,
    token: str,
    engine_link: EngineLink,
) -> None:
    def settings(listen: str) -> Settings:
        return _settings(listen, triton.grpc_target, model_dir, pki, token_store, engine_link)

    with _retry_log() as log, _late_facade(settings, log) as endpoint:
        config = _client_config(endpoint, pki, token, PATIENT)
        with Client(config) as client:
            completion = client.generate("The capital of France is", max_tokens=1, timeout=120)
    assert completion.completion_tokens == 1
    assert any(m.startswith("Generate attempt 1 of 100 failed (UNAVAILABLE") for m in log.messages)


def test_async_call_made_before_the_facade_listens_succeeds(
    triton: TritonProcess,
    model_dir: Path,
    pki: DevPki,
    token_store: TokenStore,
    token: str,
    engine_link: EngineLink,
) -> None:
    def settings(listen: str) -> Settings:
        return _settings(listen, triton.grpc_target, model_dir, pki, token_store, engine_link)

    async def stream(config: ClientConfig) -> list[str]:
        async with AsyncClient(config) as client:
            return [d.text async for d in client.generate_stream("Hi", max_tokens=3, timeout=120)]

    with _retry_log() as log, _late_facade(settings, log) as endpoint:
        texts = asyncio.run(stream(_client_config(endpoint, pki, token, PATIENT)))
    assert texts  # the whole stream, from the attempt that reached the façade
    assert any(m.startswith("GenerateStream attempt 1 of 100") for m in log.messages)


@dataclasses.dataclass
class Env:
    triton: TritonProcess
    facade: FacadeThread
    audit_dir: Path
    endpoint: str

    def audit(self) -> list[dict[str, Any]]:
        """The façade's audit records written so far (pending ones flushed)."""
        self.facade.running.generations.audit.flush(timeout=10)
        lines = (self.audit_dir / "audit.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def audit_after(self, before: int, count: int) -> list[dict[str, Any]]:
        """The records after the first `before`, once there are `count` of them: the façade
        writes a call's record after the caller has its status, so it may come a bit later."""
        deadline = time.monotonic() + 10
        while len(records := self.audit()[before:]) < count:
            assert time.monotonic() < deadline, f"{len(records)} audit records, not {count}"
            time.sleep(0.05)
        return records


@pytest.fixture
def env(
    tmp_path: Path,
    model_dir: Path,
    engine_link: EngineLink,
    pki: DevPki,
    token_store: TokenStore,
) -> Iterator[Env]:
    """A Triton and a façade of their own (as in test_reliability.py): this test kills Triton."""
    repo = tmp_path / "model_repository"
    render_cpu_model(repo, CpuEngineConfig(model_name=MODEL, hf_model_dir=model_dir))
    triton = TritonProcess(
        TritonOptions(model_repository=repo, models=(MODEL,), exit_timeout_s=2, link=engine_link)
    )
    triton.start()
    audit_dir = tmp_path / "audit"
    settings = _settings(
        "127.0.0.1:0", triton.grpc_target, model_dir, pki, token_store, engine_link, audit_dir
    )
    try:
        facade = FacadeThread(settings)
    except BaseException:
        triton.stop()
        raise
    try:
        yield Env(triton, facade, audit_dir, f"127.0.0.1:{facade.port}")
    finally:
        facade.stop()
        triton.stop()


def test_stream_cut_after_its_first_message_is_not_retried(
    env: Env, pki: DevPki, token: str
) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.2, max_backoff=0.4)
    with Client(_client_config(env.endpoint, pki, token, policy)) as client:
        # The façade answers (and so Triton is up) before anything is killed.
        assert client.generate("Hi", max_tokens=1, timeout=60).completion_tokens == 1
        before = len(env.audit_after(0, 1))
        stream = client.generate_stream(LONG_PROMPT, max_tokens=400, seed=1, request_id="cut-1")
        received = [next(stream), next(stream)]
        env.triton.kill()  # SIGKILL mid-stream
        with pytest.raises(UnavailableError) as cut:
            received.extend(stream)
        assert cut.value.attempts == 1
        (cut_record,) = env.audit_after(before, 1)  # one attempt
        assert (cut_record["request_id"], cut_record["status"]) == ("cut-1", "UNAVAILABLE")
        assert {d.request_id for d in received} == {"cut-1"}
        assert all(d.finish_reason is None for d in received)  # cut before its end

        # A call that keeps failing: every attempt reaches the façade, under one request id
        # (made up by the client, since the caller gave none).
        before += 1
        started = time.monotonic()
        with pytest.raises(UnavailableError) as failed:
            client.generate("Hi", max_tokens=1, timeout=30)
        elapsed = time.monotonic() - started
        assert failed.value.attempts == 3
        # Pauses are at most 0.2 + 0.4 s and each attempt fails fast; loose for a busy machine.
        assert elapsed < 5.0
        attempts = env.audit_after(before, 3)
        assert [(r["rpc"], r["status"]) for r in attempts] == [("Generate", "UNAVAILABLE")] * 3
        assert len({r["request_id"] for r in attempts}) == 1

        # The caller's timeout bounds the retries: no attempt starts after it.
        patient = RetryPolicy(max_attempts=100, initial_backoff=1.0, max_backoff=1.0)
        with Client(dataclasses.replace(client.config, retry=patient)) as slow:
            started = time.monotonic()
            with pytest.raises((UnavailableError, DeadlineExceededError)) as bounded:
                slow.generate("Hi", max_tokens=1, timeout=2.5)
            elapsed = time.monotonic() - started
        assert elapsed < 2.5 + 1.0
        assert 1 < bounded.value.attempts < 100
