"""Measurements behind docs/benchmarks.md's "what limits the façade" (issue #8).

1. `read-paths`: a bare consumer's CPU per token reading Triton's `ModelStreamInfer` from the
   synthetic engine (unpaced) at a fixed number of requests in flight, several ways, in one
   process, alternating: one grpc.aio stream per request (the bench's direct path); a stream
   per request on the façade's lean reader (engine_h2.py, one HTTP/2 connection); all requests
   multiplexed on 1 or 4 grpc.aio streams; all requests on 1–4 *sync* grpc streams, one reader
   thread each. Question: can the façade read Triton more cheaply than one grpc read per
   response?
2. `request-cost`: the façade's CPU per request (sequential 1-token requests through the real
   `autoglm serve` subprocess with mTLS + token + tracing, as `autoglm bench` starts it), per
   thread, and TTFT next to the direct path.
3. `ttft-breakdown`: where the façade's time to first token goes. Sequential 1-token requests
   (as in 2); each call's client-side timestamps are joined with the façade's own spans (the
   bench's trace sink keeps them; same host, same wall clock) and split into: the call reaching
   the handler, the handler's work before the engine call, Triton until the first token is
   read, and that token's way to the client. The direct path's TTFT is measured alongside.
   Calls are joined with their traces by request id. With `--concurrency N --output-len T
   --tokens-per-second R [--ramp-up S]` the requests are N paced streams in a closed loop (as
   `autoglm bench` runs them), so the phases show where a loaded façade's first token waits.
4. `rpc-floor`: the floor under (2) and (3): a bare grpc.aio server (a subprocess) whose
   `GenerateStream` yields one fixed message, called the same way (mTLS + the bearer token as
   call metadata, sequentially); its CPU per request and its time to the first message are what
   grpc.aio alone costs. With
   `--messages N` each call streams N one-token messages instead — `--interval-ms` apart
   (paced like a GPU), `--concurrency` calls at once, by `yield` or by `context.write`
   (`--style`) — and the figure is the server's CPU per message: the floor under the
   façade's per-token cost when every token is its own message (paced streams).

    .venv/bin/python scripts/bench_read_cost.py read-paths --concurrency 64 --seconds 8
    .venv/bin/python scripts/bench_read_cost.py request-cost --requests 300
    .venv/bin/python scripts/bench_read_cost.py ttft-breakdown --requests 200
    .venv/bin/python scripts/bench_read_cost.py ttft-breakdown --requests 384 --rounds 1 \
        --concurrency 64 --output-len 64 --tokens-per-second 40 [--ramp-up 1.6]
    .venv/bin/python scripts/bench_read_cost.py rpc-floor --requests 500
    .venv/bin/python scripts/bench_read_cost.py rpc-floor --requests 256 --concurrency 64 \
        --messages 64 --interval-ms 25 [--style write]

rpc-floor also reports the p50 time to a call's first message.

CPU is this process's (read-paths) or the façade process's (request-cost) own, from
getrusage / /proc, so other load on the machine inflates it less than wall-clock figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import queue
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from autoglm.server import engine_h2
from autoglm.server.bench.direct import GREEDY, DirectPath
from autoglm.server.bench.facade import FacadePath
from autoglm.server.bench.procstat import cpu_seconds, descendants
from autoglm.server.bench.profile import by_area, start_py_spy, summarize_collapsed
from autoglm.server.bench.stack import BenchStack, synthetic_stack
from autoglm.server.bench.workload import BenchRequest
from autoglm.server.engine_client import (
    EngineRequest,
    build_infer_request,
    let_finish,
    parse_stream_response,
)
from autoglm.server.pki import DevPki, ensure_dev_pki
from autoglm.server.replicas import unix_socket_path
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

MODEL_DIR = Path.home() / ".cache" / "autoglm" / "models" / "SmolLM2-135M-Instruct"
SYNTH = "bench-synthetic-unpaced"
PROMPT = "The capital of France is"


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of `pid`, keyed 'tid name', and of each of its descendants (the
    façade's span exporter process), keyed 'child pid'."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {f"child {c}": cpu_seconds(c) for c in descendants(pid)}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


class ReadPaths:
    """Consumers of one Triton stream of synthetic tokens; each returns tokens read."""

    def __init__(self, stack: BenchStack, concurrency: int, seconds: float, prompt: list[int]):
        assert stack.triton is not None
        self.target, self.link = stack.triton.grpc_target, stack.link
        self.concurrency, self.seconds, self.prompt = concurrency, seconds, prompt
        self._ids = itertools.count()

    def _request(self) -> service_pb2.ModelInferRequest:
        return build_infer_request(
            EngineRequest(SYNTH, f"r{next(self._ids)}", self.prompt, 64, -1, 0, GREEDY)
        )

    async def separate(self, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> int:
        tokens, stop = 0, time.monotonic() + self.seconds

        async def worker() -> None:
            nonlocal tokens
            while time.monotonic() < stop:
                call = stub.ModelStreamInfer(metadata=self.link.metadata())
                await call.write(self._request())
                await call.done_writing()
                while True:
                    ids, final = parse_stream_response(await call.read())
                    tokens += len(ids)
                    if final:
                        break
                # As the façade and the bench's direct path do: the stream ends on Triton's OK,
                # never by a cancel right after the final response (Triton 2.51 leaks some of
                # those requests: docs/reliability.md).
                let_finish(call)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return tokens

    async def multiplexed(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, n: int) -> int:
        tokens, stop = 0, time.monotonic() + self.seconds

        async def one_stream() -> None:
            nonlocal tokens
            call = stub.ModelStreamInfer(metadata=self.link.metadata())
            in_flight = self.concurrency // n
            for _ in range(in_flight):
                await call.write(self._request())
            while in_flight:
                ids, final = parse_stream_response(await call.read())
                tokens += len(ids)
                if final:
                    in_flight -= 1
                    if time.monotonic() < stop:
                        await call.write(self._request())
                        in_flight += 1
            await call.done_writing()
            await call.code()  # Triton's OK, not a cancel after the final responses

        await asyncio.gather(*(one_stream() for _ in range(n)))
        return tokens

    async def lean_streams(self) -> int:
        """A stream per request, all on one HTTP/2 connection read by engine_h2.py."""
        unix_path = unix_socket_path(self.target)
        host, port = ("localhost", "0") if unix_path else self.target.rsplit(":", 1)
        endpoint = engine_h2.Endpoint(
            host,
            int(port),
            ssl_context=self.link.ssl_context(),
            server_hostname=host,
            metadata=self.link.metadata(),
            unix_path=unix_path,
        )
        tokens, stop = 0, time.monotonic() + self.seconds

        def on_message(payload: bytes) -> bool:
            nonlocal tokens
            ids, final = parse_stream_response(
                service_pb2.ModelStreamInferResponse.FromString(payload)
            )
            tokens += len(ids)
            return final

        async def worker() -> None:
            while time.monotonic() < stop:
                await endpoint.call(self._request().SerializeToString(), on_message)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        endpoint.close()
        return tokens

    def sync_threads(self, n: int) -> int:
        channel = self.link.channel(self.target)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        counts, stop = [0] * n, time.monotonic() + self.seconds

        def one_stream(i: int) -> None:
            pending: queue.SimpleQueue[service_pb2.ModelInferRequest | None] = queue.SimpleQueue()
            in_flight = self.concurrency // n
            for _ in range(in_flight):
                pending.put(self._request())

            def requests() -> Iterator[service_pb2.ModelInferRequest]:
                while (r := pending.get()) is not None:
                    yield r

            call = stub.ModelStreamInfer(requests(), metadata=self.link.metadata())
            for resp in call:
                ids, final = parse_stream_response(resp)
                counts[i] += len(ids)
                if final:
                    in_flight -= 1
                    if time.monotonic() < stop:
                        pending.put(self._request())
                        in_flight += 1
                    elif not in_flight:
                        pending.put(None)  # half-closes; Triton then ends the call with OK

        threads = [threading.Thread(target=one_stream, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        channel.close()
        return sum(counts)


def read_paths(stack: BenchStack, args: argparse.Namespace, prompt: list[int]) -> None:
    paths = ReadPaths(stack, args.concurrency, args.seconds, prompt)

    async def run() -> None:
        channel = paths.link.aio_channel(paths.target)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        ways: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("one aio stream per request", lambda: paths.separate(stub)),
            ("lean h2: a stream per request", paths.lean_streams),
            ("all on 1 aio stream", lambda: paths.multiplexed(stub, 1)),
            ("all on 4 aio streams", lambda: paths.multiplexed(stub, 4)),
            ("all on 1 sync stream (thread)", lambda: asyncio.to_thread(paths.sync_threads, 1)),
            ("all on 4 sync streams (threads)", lambda: asyncio.to_thread(paths.sync_threads, 4)),
        ]
        await paths.separate(stub)  # warm-up
        for round_ in range(args.rounds):
            for name, way in ways:
                cpu, wall = _own_cpu(), time.monotonic()
                tokens = await way()
                cpu, wall = _own_cpu() - cpu, time.monotonic() - wall
                print(
                    f"round {round_ + 1}  {name:33s} {tokens / wall:7.0f} tok/s  "
                    f"consumer CPU {1e6 * cpu / tokens:6.1f} µs/token",
                    flush=True,
                )
        await channel.close()

    asyncio.run(run())


def request_cost(stack: BenchStack, args: argparse.Namespace, prompt: list[int]) -> None:
    assert stack.triton is not None
    req = BenchRequest(prompt=PROMPT, prompt_ids=tuple(prompt), max_tokens=1)
    pid = stack.facade_pid

    async def ttfts(path: DirectPath | FacadePath, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0, first = time.perf_counter(), None
            async for _tokens in path.stream(req):
                first = first if first is not None else time.perf_counter() - t0
            assert first is not None
            out.append(first * 1000)
        return out

    async def run() -> None:
        assert stack.triton is not None
        direct = DirectPath(stack.triton.grpc_target, stack.link, SYNTH, -1, 0)
        facade = FacadePath(stack.facade_endpoint, stack.pki, stack.token, SYNTH)
        await ttfts(direct, 20)
        await ttfts(facade, 20)
        for round_ in range(args.rounds):
            d = await ttfts(direct, args.requests)
            before = _thread_cpu(pid)
            f = await ttfts(facade, args.requests)
            after = _thread_cpu(pid)
            per_thread = {k: after[k] - before.get(k, 0.0) for k in after}
            total = sum(per_thread.values())
            print(
                f"round {round_ + 1}  TTFT p50 direct {statistics.median(d):.2f} ms, façade "
                f"{statistics.median(f):.2f} ms; façade CPU {1000 * total / args.requests:.2f} "
                "ms/request",
                flush=True,
            )
            for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1]):
                if v * 1000 / args.requests >= 0.05:
                    print(f"    thread {k:28s} {1000 * v / args.requests:.2f} ms/request")
        if args.profile is not None:
            await profiled(facade)
        await direct.close()
        await facade.close()

    async def profiled(facade: FacadePath) -> None:
        # An extra, unmeasured round under py-spy (--native pauses the process per sample).
        out = args.profile / "request-cost.raw"
        args.profile.mkdir(parents=True, exist_ok=True)
        spy = start_py_spy(pid, args.profile_seconds, out, rate=500)
        deadline = time.monotonic() + args.profile_seconds
        n = 0
        while time.monotonic() < deadline:
            await ttfts(facade, 20)
            n += 20
        spy.wait(timeout=60)
        samples, top = summarize_collapsed(out.read_text(), top=40)
        print(f"py-spy: {n} requests, {samples} samples -> {out}")
        for area, share in sorted(by_area(out.read_text()).items(), key=lambda kv: -kv[1]):
            print(f"    area {area:20s} {share:5.1f} %")
        for f in top:
            print(f"    {f.self_pct:5.1f} % self {f.total_pct:5.1f} % total  {f.frame}")

    asyncio.run(run())


def ttft_breakdown(stack: BenchStack, args: argparse.Namespace, prompt: list[int]) -> None:
    """Each façade call's client timestamps joined with its own spans (by request id; same
    host, same wall clock) split its time to first token into four phases. By default
    sequential 1-token requests; with --concurrency N streams of --output-len tokens in a closed
    loop (paced with --tokens-per-second, started over --ramp-up seconds)."""
    assert stack.triton is not None
    req = BenchRequest(prompt=PROMPT, prompt_ids=tuple(prompt), max_tokens=args.output_len)
    kept = stack.sink.keep_spans()
    ids = (f"ttft-{i}" for i in itertools.count())

    async def calls(path: DirectPath | FacadePath, n: int) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []  # (request id, sent, first message) time.time_ns
        todo = iter(range(n))

        async def one() -> None:
            rid = next(ids)
            sent, first = time.time_ns(), 0
            stream = path.stream(req, rid) if isinstance(path, FacadePath) else path.stream(req)
            async for _tokens in stream:
                first = first or time.time_ns()
            out.append((rid, sent, first))

        async def worker(i: int) -> None:
            await asyncio.sleep(i * args.ramp_up / args.concurrency)
            for _ in todo:
                await one()

        await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
        return out

    async def run() -> tuple[list[float], list[tuple[str, int, int]]]:
        assert stack.triton is not None
        model = stack.opts.models[0].name
        direct = DirectPath(stack.triton.grpc_target, stack.link, model, -1, 0)
        facade = FacadePath(stack.facade_endpoint, stack.pki, stack.token, model)
        warm = max(20, args.concurrency)
        await calls(direct, warm)
        await calls(facade, warm)
        direct_ms: list[float] = []
        facade_calls: list[tuple[str, int, int]] = []
        for _ in range(args.rounds):
            direct_ms += [(f - s) / 1e6 for _, s, f in await calls(direct, args.requests)]
            facade_calls += await calls(facade, args.requests)
        await direct.close()
        await facade.close()
        return direct_ms, facade_calls

    direct_ms, facade_calls = asyncio.run(run())
    deadline = time.monotonic() + 20  # the batch span processor exports every 5 s
    phases: list[dict[str, float]] = []
    while time.monotonic() < deadline:
        phases = _ttft_phases(facade_calls, list(kept))
        if len(phases) == len(facade_calls):
            break
        time.sleep(0.5)
    if not phases:
        raise SystemExit("no façade call could be joined with its spans (is tracing off?)")
    how = (
        "one at a time"
        if args.concurrency == 1
        else f"{args.concurrency} in flight, ramp-up {args.ramp_up:g} s"
    )
    print(
        f"{len(phases)} façade calls joined with their spans (of {len(facade_calls)}; {how}, "
        f"{args.output_len} token{'s' if args.output_len != 1 else ''} each); "
        f"TTFT p50 direct {statistics.median(direct_ms):.2f} ms, "
        f"façade {statistics.median((f - s) / 1e6 for _, s, f in facade_calls):.2f} ms"
    )
    labels = {
        "reach": "client call → façade handler starts (grpc.aio: TLS, HTTP/2, interceptors)",
        "prepare": "handler → engine call starts (auth, validation, admission, tokenization)",
        "engine": "engine call → first token read from Triton (Triton + the lean reader)",
        "relay": "first token read → client has it (relay, detokenize, grpc.aio write + read)",
    }
    for key, label in labels.items():
        values = sorted(p[key] for p in phases)
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"    {statistics.median(values):7.2f} ms p50 {p90:7.2f} ms p90  {label}")
    # Calls that were already sent when the previous call's handler started had to wait for the
    # façade to take them: the gaps between those handler starts are its rate of taking calls
    # off a backlog (one at a time, on its event loop, between everything else it does).
    by_start = sorted(phases, key=lambda p: p["handler"])
    backlog = [
        b["handler"] - a["handler"]
        for a, b in itertools.pairwise(by_start)
        if b["sent"] < a["handler"]
    ]
    if backlog:
        print(
            f"    {statistics.median(backlog):7.2f} ms p50 between handler starts while calls "
            f"waited ({len(backlog)} of {len(by_start) - 1} gaps)"
        )


def _ttft_phases(calls: list[tuple[str, int, int]], spans: list[Any]) -> list[dict[str, float]]:
    """Phases of each call whose trace arrived: joined by the request id that the generation
    span carries as `gen_ai.response.id` (a join by start time mixes calls up under load)."""
    by_trace: dict[bytes, list[Any]] = {}
    trace_of: dict[str, bytes] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
        for a in s.attributes:
            if a.key == "gen_ai.response.id":
                trace_of[a.value.string_value] = s.trace_id
    out = []
    for rid, sent, first in calls:
        trace = by_trace.get(trace_of.get(rid, b""), [])
        roots = [s for s in trace if not s.parent_span_id]
        engine = [s for s in trace if s.name.startswith("triton ")]
        token = [e for s in trace for e in s.events if e.name == "gen_ai.first_token"]
        if not roots or not engine or not token:
            continue
        root = roots[0]
        out.append(
            {
                "sent": sent / 1e6,
                "handler": root.start_time_unix_nano / 1e6,
                "reach": (root.start_time_unix_nano - sent) / 1e6,
                "prepare": (engine[0].start_time_unix_nano - root.start_time_unix_nano) / 1e6,
                "engine": (token[0].time_unix_nano - engine[0].start_time_unix_nano) / 1e6,
                "relay": (first - token[0].time_unix_nano) / 1e6,
            }
        )
    return out


class _FloorService(pb_grpc.TextGenerationServicer):
    """`sampling.max_tokens` one-token messages (at least one), `interval_s` apart."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s

    async def GenerateStream(  # type: ignore[override]
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        for i in range(max(1, request.sampling.max_tokens)):
            if i and self.interval_s:
                await asyncio.sleep(self.interval_s)
            yield pb.GenerateResponse(request_id="r", model=request.model, text=" P", token_ids=[i])


class _FloorWriteService(_FloorService):
    """The same messages sent with `context.write` from a coroutine handler."""

    async def GenerateStream(  # type: ignore[override]
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> None:
        for i in range(max(1, request.sampling.max_tokens)):
            if i and self.interval_s:
                await asyncio.sleep(self.interval_s)
            await context.write(
                pb.GenerateResponse(request_id="r", model=request.model, text=" P", token_ids=[i])
            )


def _floor_server(pki: DevPki, port_file: Path, style: str, interval_s: float) -> None:
    async def serve() -> None:
        server = grpc.aio.server()
        service = (_FloorWriteService if style == "write" else _FloorService)(interval_s)
        pb_grpc.add_TextGenerationServicer_to_server(service, server)
        creds = grpc.ssl_server_credentials(
            [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
            pki.ca_cert.read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        await asyncio.to_thread(port_file.write_text, str(port))
        await server.wait_for_termination()

    asyncio.run(serve())


def rpc_floor(args: argparse.Namespace, tmp: Path) -> None:
    pki = ensure_dev_pki(tmp / "pki")
    port_file = tmp / "port"
    proc = multiprocessing.get_context("spawn").Process(
        target=_floor_server,
        args=(pki, port_file, args.style, args.interval_ms / 1000),
        daemon=True,
    )
    proc.start()
    while not port_file.exists():
        time.sleep(0.05)
    endpoint = f"127.0.0.1:{port_file.read_text()}"
    assert proc.pid is not None
    pid = proc.pid

    async def run() -> None:
        path = FacadePath(endpoint, pki, "agm_floor_token", "m")
        req = BenchRequest(prompt=PROMPT, prompt_ids=(1, 2, 3), max_tokens=args.messages)
        received = 0
        ttfts: list[float] = []

        async def one() -> None:
            nonlocal received
            t0, first = time.perf_counter(), True
            async for tokens in path.stream(req):
                if first:
                    ttfts.append(1000 * (time.perf_counter() - t0))
                    first = False
                received += tokens

        async def calls(n: int) -> None:
            todo = iter(range(n))

            async def worker() -> None:
                for _ in todo:
                    await one()

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        await calls(min(50, args.requests))
        for round_ in range(args.rounds):
            received = 0
            ttfts.clear()
            before = sum(_thread_cpu(pid).values())
            t0 = time.perf_counter()
            await calls(args.requests)
            wall = time.perf_counter() - t0
            cpu = sum(_thread_cpu(pid).values()) - before
            assert received == args.requests * args.messages, received
            if args.messages == 1:
                print(
                    f"round {round_ + 1}  bare grpc.aio server: {1000 * cpu / args.requests:.2f} "
                    f"ms CPU per request, {1000 * wall / args.requests:.2f} ms per call, "
                    f"first message after {statistics.median(ttfts):.2f} ms (p50)",
                    flush=True,
                )
                continue
            print(
                f"round {round_ + 1}  bare grpc.aio server ({args.style}, c={args.concurrency}, "
                f"{args.messages} messages {args.interval_ms:g} ms apart): "
                f"{1e6 * cpu / received:.0f} µs CPU per message "
                f"({1e6 * cpu / args.requests / args.messages:.0f}), "
                f"{received / wall:.0f} messages/s, {100 * cpu / wall:.0f} % of a core, "
                f"first message after {statistics.median(ttfts):.2f} ms (p50)",
                flush=True,
            )
        await path.close()

    try:
        asyncio.run(run())
    finally:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what", choices=("read-paths", "request-cost", "ttft-breakdown", "rpc-floor")
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="requests in flight (64; rpc-floor: 1)"
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--engine-link", choices=("unix", "tls"), default="unix", help="as `autoglm bench`'s"
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--profile", type=Path, default=None, help="request-cost: py-spy the façade into DIR"
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--messages", type=int, default=1, help="rpc-floor: messages per call")
    parser.add_argument("--interval-ms", type=float, default=0.0, help="rpc-floor: pacing")
    parser.add_argument("--style", choices=("yield", "write"), default="yield", help="rpc-floor")
    parser.add_argument(
        "--tokens-per-second", type=float, default=0.0, help="ttft-breakdown: the engine's pace"
    )
    parser.add_argument(
        "--output-len", type=int, default=1, help="ttft-breakdown: tokens per request"
    )
    parser.add_argument(
        "--ramp-up", type=float, default=0.0, help="ttft-breakdown: start streams over N s"
    )
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = 1 if args.what in ("rpc-floor", "ttft-breakdown") else 64
    if args.what == "rpc-floor":
        with tempfile.TemporaryDirectory(prefix="autoglm-rpcfloor-") as tmp:
            rpc_floor(args, Path(tmp))
        return
    with (
        tempfile.TemporaryDirectory(prefix="autoglm-readcost-") as tmp,
        synthetic_stack(
            Path(tmp),
            MODEL_DIR,
            SYNTH
            if not args.tokens_per_second
            else f"bench-synthetic-{args.tokens_per_second:g}tps",
            tokens_per_second=args.tokens_per_second,
            engine_link=args.engine_link,
        ) as (stack, prompt),
    ):
        measure = {
            "read-paths": read_paths,
            "request-cost": request_cost,
            "ttft-breakdown": ttft_breakdown,
        }[args.what]
        measure(stack, args, prompt)


if __name__ == "__main__":
    main()
