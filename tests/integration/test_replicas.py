"""Several Triton replicas behind one façade; deep health; ejection of a wedged or dead replica.

Two real Triton processes host the synthetic engine (a benchmark tool with the engine's tensor
contract: each stream is the cycle of SmolLM2 ids from position `seed`, so every output is known)
and the façade (real mTLS, token, secured link) gets the target `127.0.0.1:p1,127.0.0.1:p2`.

- balancing: gRPC's round_robin spreads calls over both replicas (Triton's own counters);
- hung replica (the whole Triton SIGSTOPped: the port still accepts connections, nothing
  answers): ejected, every new call succeeds on the other replica; both hung: readiness turns
  NOT_SERVING; SIGCONT: both serve again;
- wedged model (only the python-backend stub SIGSTOPped): Triton answers and still says the model
  is ready, but no token comes — only the one-token probe can tell, and readiness turns off.
  (Triton 2.51's python backend may then abort the whole server, "boost::interprocess::
  lock_exception"; the test restarts it);
- dead replica: SIGKILL mid-load fails only the streams it carried, within 2 s; new calls succeed
  on the survivor at once; restarted on the same address it rejoins within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from autoglm.client import AsyncClient, Client, ClientConfig, UnavailableError
from autoglm.server.devstack.pki import DevPki
from autoglm.server.devstack.triton_process import TritonOptions, TritonProcess
from autoglm.server.engine.link import EngineLink
from autoglm.server.models import ModelSpec, load_model
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.settings import Settings, TlsSettings
from autoglm.triton_models.synthetic import render_synthetic_model

from .conftest import FacadeThread, scrape, secure_channel

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYN = "synthetic"
PACE = 100.0  # tokens/s per stream
CYCLE_TEXT = "The quick brown fox jumps over the lazy dog. Numbers 0123456789, café, 北京. "


@dataclasses.dataclass
class Replicas:
    options: list[TritonOptions]
    tritons: list[TritonProcess]
    cycle: list[int]
    end_id: int

    @property
    def target(self) -> str:
        return ",".join(t.grpc_target for t in self.tritons)

    def restart(self, i: int) -> None:
        self.tritons[i].stop()  # also kills a dead Triton's leftover python-backend stubs
        self.tritons[i] = TritonProcess(self.options[i])
        self.tritons[i].start()

    def ensure_running(self, i: int) -> None:
        if not self.tritons[i].running:
            self.restart(i)

    def served(self, i: int) -> float:
        return scrape(self.tritons[i].metrics_url, "nv_inference_request_success", model=SYN)

    def expected(self, seed: int, count: int) -> list[int]:
        usable = [t for t in self.cycle if t != self.end_id]
        return [usable[(seed + k) % len(usable)] for k in range(count)]


def _stubs(triton: TritonProcess) -> list[int]:
    """Pids of the python-backend stub processes of this Triton (its children)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == triton.pid and "triton_python" in stat.with_name("comm").read_text():
            pids.append(int(stat.parent.name))
    assert pids, "no python backend stub found"
    return pids


def _signal_stubs(triton: TritonProcess, sig: signal.Signals) -> None:
    for pid in _stubs(triton):
        os.kill(pid, sig)


def _signal_all(triton: TritonProcess, sig: signal.Signals) -> None:
    """Triton and its stubs (its own process group)."""
    assert triton.pid is not None
    os.killpg(triton.pid, sig)


def _wait(predicate: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    """`_wait` for code on the event loop: the streams it waits for run meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, engine_link: EngineLink
) -> Iterator[Replicas]:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    cycle = tok.encode(CYCLE_TEXT, add_special_tokens=False).ids
    root = tmp_path_factory.mktemp("replicas")
    options, tritons = [], []
    for i in range(2):
        repo = root / f"repo{i}"
        render_synthetic_model(repo, SYN, PACE, token_ids=cycle, max_concurrency=64)
        first = TritonProcess(
            TritonOptions(
                model_repository=repo,
                models=(SYN,),
                exit_timeout_s=2,
                link=engine_link,
                log_file=root / f"triton{i}.log",
            )
        )
        # The same ports on restart, as a restarted pod keeps its address behind the Service.
        options.append(
            dataclasses.replace(
                first.options,
                grpc_port=first.grpc_port,
                http_port=first.http_port,
                metrics_port=first.metrics_port,
            )
        )
        tritons.append(first)
    for t in tritons:
        t.start()
    end_id = load_model(ModelSpec(name=SYN, triton_model=SYN, tokenizer_dir=model_dir)).end_id
    r = Replicas(options, tritons, cycle, end_id)
    try:
        yield r
    finally:
        for t in r.tritons:
            # SIGCONT whatever a failed test left stopped (else the shutdown would wait).
            with contextlib.suppress(AssertionError, ProcessLookupError):
                _signal_all(t, signal.SIGCONT)
            t.stop()


def _facade(
    target: str,
    model_dir: Path,
    pki: DevPki,
    token_store: TokenStore,
    engine_link: EngineLink,
    interval: float,
) -> FacadeThread:
    return FacadeThread(
        Settings(
            listen="127.0.0.1:0",
            triton_target=target,
            triton_tls_name="localhost",  # the dev link's certificate names localhost
            models=(ModelSpec(name=SYN, triton_model=SYN, tokenizer_dir=model_dir),),
            tls=TlsSettings(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
            token_store=token_store.path,
            engine_link=engine_link,
            health_interval_s=interval,
            health_probe_timeout_s=1.0,
            metrics_listen=None,
        )
    )


@pytest.fixture(scope="module")
def rfacade(
    replicas: Replicas,
    model_dir: Path,
    pki: DevPki,
    token_store: TokenStore,
    engine_link: EngineLink,
) -> Iterator[FacadeThread]:
    f = _facade(replicas.target, model_dir, pki, token_store, engine_link, 0.25)
    try:
        yield f
    finally:
        f.stop()


def _config(f: FacadeThread, pki: DevPki, token: str) -> ClientConfig:
    return ClientConfig(
        endpoint=f"127.0.0.1:{f.port}",
        ca_cert=pki.ca_cert,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        token=token,
        model=SYN,
    )


@pytest.fixture
def config(rfacade: FacadeThread, pki: DevPki, token: str) -> ClientConfig:
    return _config(rfacade, pki, token)


def _healthy(facade: FacadeThread) -> tuple[str, ...]:
    return facade.running.engine.healthy_endpoints


def _status(facade: FacadeThread, pki: DevPki) -> int:
    with secure_channel(f"127.0.0.1:{facade.port}", pki) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


SERVING = health_pb2.HealthCheckResponse.SERVING


def _both(replicas: Replicas) -> tuple[str, ...]:
    return tuple(sorted(t.grpc_target for t in replicas.tritons))


def test_balances_across_replicas(
    replicas: Replicas,
    model_dir: Path,
    pki: DevPki,
    token_store: TokenStore,
    engine_link: EngineLink,
    token: str,
) -> None:
    # Own façade with a long health interval: its one-token probes stay out of the counts.
    f = _facade(replicas.target, model_dir, pki, token_store, engine_link, 60.0)
    try:
        _wait(lambda: _healthy(f) == _both(replicas), 10)
        before = [replicas.served(0), replicas.served(1)]
        with Client(_config(f, pki, token)) as c:
            for seed in range(1, 41):
                out = c.generate("hi", max_tokens=3, seed=seed, temperature=1.0)
                assert list(out.token_ids) == replicas.expected(seed, 3)
        got = [replicas.served(0) - before[0], replicas.served(1) - before[1]]
    finally:
        f.stop()
    assert 40 <= sum(got) <= 42  # at most one probe round each
    assert min(got) >= 12, f"round_robin did not spread the calls: {got}"


def test_hung_replica_is_ejected_then_rejoins(
    replicas: Replicas, rfacade: FacadeThread, config: ClientConfig, pki: DevPki
) -> None:
    _wait(lambda: _healthy(rfacade) == _both(replicas), 10)
    hung = replicas.tritons[0]
    _signal_all(hung, signal.SIGSTOP)  # the port accepts connections; nothing answers
    try:
        ejected = _wait(lambda: _healthy(rfacade) == (replicas.tritons[1].grpc_target,), 5)
        assert _status(rfacade, pki) == SERVING  # one replica still serves
        with Client(config) as c:
            for seed in range(1, 21):  # a call routed to the wedged replica would time out
                out = c.generate("hi", max_tokens=3, seed=seed, timeout=5)
                assert list(out.token_ids) == replicas.expected(seed, 3)
    finally:
        _signal_all(hung, signal.SIGCONT)
    rejoined = _wait(lambda: _healthy(rfacade) == _both(replicas), 5)
    print(f"hung replica ejected after {ejected:.2f} s, rejoined {rejoined:.2f} s after SIGCONT")


def test_all_replicas_hung_turns_readiness_off(
    replicas: Replicas, rfacade: FacadeThread, pki: DevPki
) -> None:
    _wait(lambda: _status(rfacade, pki) == SERVING, 10)
    for t in replicas.tritons:
        _signal_all(t, signal.SIGSTOP)
    try:
        off = _wait(lambda: _status(rfacade, pki) != SERVING, 5)
    finally:
        for t in replicas.tritons:
            _signal_all(t, signal.SIGCONT)
    on = _wait(lambda: _status(rfacade, pki) == SERVING, 5)
    print(f"readiness off {off:.2f} s after both replicas hung, back {on:.2f} s after SIGCONT")


def test_wedged_model_turns_readiness_off(
    replicas: Replicas,
    model_dir: Path,
    pki: DevPki,
    token_store: TokenStore,
    engine_link: EngineLink,
) -> None:
    """One plain Triton target; Triton answers and reports the model ready, but no token comes."""
    one = replicas.tritons[1]
    f = _facade(one.grpc_target, model_dir, pki, token_store, engine_link, 0.25)
    try:
        _wait(lambda: _status(f, pki) == SERVING, 10)
        _signal_stubs(one, signal.SIGSTOP)
        try:
            off = _wait(lambda: _status(f, pki) != SERVING, 5)
        finally:
            with contextlib.suppress(ProcessLookupError, AssertionError):
                _signal_stubs(one, signal.SIGCONT)
        # Triton 2.51's python backend may abort the server after this, or keep the model broken
        # ("Stub process … is not healthy"): then the replica is replaced, as an orchestrator
        # would. The façade's part — readiness off while no token comes — is asserted above.
        try:
            _wait(lambda: _status(f, pki) == SERVING or not replicas.tritons[1].running, 10)
        except AssertionError:
            replicas.tritons[1].kill()
        if not replicas.tritons[1].running:
            replicas.ensure_running(1)
            _wait(lambda: _status(f, pki) == SERVING, 10)
    finally:
        f.stop()
    print(f"readiness off {off:.2f} s after the model wedged; serving again after restart")


async def _stream(
    client: AsyncClient, seed: int, n: int, ids: list[int]
) -> list[int] | BaseException:
    """Streams into `ids` (the caller watches it grow); the ids, or the UnavailableError."""
    try:
        async for delta in client.generate_stream("hi", max_tokens=n, seed=seed, temperature=1.0):
            ids.extend(delta.token_ids)
    except UnavailableError as exc:
        exc.received = ids  # type: ignore[attr-defined]
        return exc
    return ids


def test_dead_replica_fails_only_its_streams_then_rejoins(
    replicas: Replicas, rfacade: FacadeThread, config: ClientConfig
) -> None:
    _wait(lambda: _healthy(rfacade) == _both(replicas), 10)
    n = int(PACE * 4)  # 4 s streams

    async def scenario() -> tuple[list[list[int] | BaseException], float, float]:
        async with AsyncClient(config) as c:
            received: list[list[int]] = [[] for _ in range(8)]
            tasks = [
                asyncio.create_task(_stream(c, seed, n, received[seed - 1])) for seed in range(1, 9)
            ]
            await _until(lambda: all(received), 10)  # every stream under way
            replicas.tritons[0].kill()
            killed = time.monotonic()
            first_failure = None
            for t in asyncio.as_completed(tasks):
                if isinstance(await t, BaseException) and first_failure is None:
                    first_failure = time.monotonic() - killed
            results = [t.result() for t in tasks]
            # New calls right after: all on the survivor, none fails.
            started = time.monotonic()
            for seed in range(100, 110):
                out = await c.generate("hi", max_tokens=3, seed=seed, timeout=5)
                assert list(out.token_ids) == replicas.expected(seed, 3)
            return results, first_failure or 0.0, time.monotonic() - started

    results, failed_after, new_calls_s = rfacade.run(scenario())
    failed = [r for r in results if isinstance(r, BaseException)]
    for seed, r in enumerate(results, start=1):
        if isinstance(r, BaseException):
            partial = r.received  # type: ignore[attr-defined]
            assert partial == replicas.expected(seed, len(partial))  # nothing garbled before
        else:
            assert r == replicas.expected(seed, n)  # the survivor's streams: complete, exact
    assert 1 <= len(failed) <= 7, f"{len(failed)} of 8 streams failed"
    assert failed_after < 2.0
    print(
        f"{len(failed)}/8 streams (the killed replica's) failed {failed_after:.2f} s after kill; "
        f"10 new calls took {new_calls_s:.2f} s, none failed"
    )
    replicas.restart(0)
    rejoined = _wait(lambda: _healthy(rfacade) == _both(replicas), 5)
    print(f"restarted replica rejoined {rejoined:.2f} s after it was ready")


def test_replica_target_is_validated() -> None:
    with pytest.raises(Exception, match="triton_target"):
        Settings(
            listen="127.0.0.1:0",
            triton_target="127.0.0.1:1,127.0.0.1",
            models=(),
            insecure_dev=True,
        ).validate()
