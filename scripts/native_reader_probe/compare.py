"""Would a native (C++) reader of Triton's stream make the façade cheaper? A measurement probe
for issue #8 — not part of the product.

Three readers take turns in ONE Python process (grpcio 1.85 imported and in use) against the
synthetic engine (unpaced, mTLS + restricted-protocol header, as `autoglm bench` runs it), 64
requests in flight, each request 128 prompt ids → 64 tokens:

  A  grpc.aio, one ModelStreamInfer stream per request (the bench's direct path, the façade's
     way: `build_infer_request` per request, `parse_stream_response` per response);
  B  probe.cc: the same streams from C++ (gRPC C++ 1.51 from Debian, async CompletionQueue, one
     polling thread), the Python thread blocked until the round ends;
  C  probe.cc feeding asyncio as a façade would need it: the C++ thread queues (request, tokens,
     final) events and signals an eventfd at most every 1 ms; the event loop drains them into
     one asyncio.Queue per request, read by 64 coroutines.

Prints tokens/s, the process's CPU µs per token (getrusage) and the event-loop thread's.

Needs Debian's gRPC C++ toolchain (root):
    apt-get install -y libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
        pkg-config
    .venv/bin/python scripts/native_reader_probe/compare.py --seconds 8 --rounds 4

Triton's .proto files are not shipped by tritonclient; the descriptors inside its generated
modules are written to a FileDescriptorSet and compiled from there.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc

from autoglm.server.bench.direct import GREEDY
from autoglm.server.bench.stack import BenchStack, synthetic_stack
from autoglm.server.engine_client import (
    EngineRequest,
    build_infer_request,
    let_finish,
    parse_stream_response,
)

HERE = Path(__file__).resolve().parent
MODEL_DIR = Path.home() / ".cache" / "autoglm" / "models" / "SmolLM2-135M-Instruct"
SYNTH = "bench-synthetic-unpaced"
CONCURRENCY = 64
MAX_TOKENS = 64
FLUSH_US = 1000


class Stats(ctypes.Structure):
    _fields_ = [
        ("cpu_s", ctypes.c_double),
        ("wall_s", ctypes.c_double),
        *(
            (n, ctypes.c_long)
            for n in ("tokens", "requests", "bad", "responses", "errors", "wakeups")
        ),
    ]


def build(work: Path) -> Path:
    """Generate Triton's C++ stubs from tritonclient's descriptors and build libprobe.so."""
    for tool in ("protoc", "grpc_cpp_plugin", "pkg-config", "g++"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install the Debian packages named in this file's doc")
    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: object) -> None:
        if fd.name in seen:  # type: ignore[attr-defined]
            return
        for dep in fd.dependencies:  # type: ignore[attr-defined]
            add(dep)
        seen.add(fd.name)  # type: ignore[attr-defined]
        fds.file.append(descriptor_pb2.FileDescriptorProto.FromString(fd.serialized_pb))  # type: ignore[attr-defined]

    add(service_pb2.DESCRIPTOR)
    gen = work / "gen"
    gen.mkdir()
    (work / "set.pb").write_bytes(fds.SerializeToString())
    subprocess.run(
        [
            "protoc",
            f"--descriptor_set_in={work / 'set.pb'}",
            f"--cpp_out={gen}",
            f"--grpc_out={gen}",
            f"--plugin=protoc-gen-grpc={shutil.which('grpc_cpp_plugin')}",
            *(f.name for f in fds.file),
        ],
        check=True,
    )
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "grpc++", "protobuf"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    sources = [str(HERE / "probe.cc"), *map(str, sorted(gen.glob("*.cc")))]
    lib = work / "libprobe.so"
    cmd = ["g++", "-O2", "-fPIC", "-shared", "-std=c++17", f"-I{gen}", *sources, "-o", str(lib)]
    subprocess.run([*cmd, *flags, "-lpthread"], check=True)
    return lib


def export_link(stack: BenchStack, prompt: list[int], out: Path) -> service_pb2.ModelInferRequest:
    """What probe_create reads: target, the link's client cert/key and CA, header, request."""
    assert stack.triton is not None
    link = stack.link
    assert link.tls is not None  # the probe's C++ reader speaks mTLS (engine_link="tls")
    out.mkdir()
    (out / "ca.pem").write_bytes(link.tls.ca_cert.read_bytes())
    (out / "client.pem").write_bytes(link.tls.client_cert.read_bytes())
    (out / "client.key").write_bytes(link.tls.client_key.read_bytes())
    ((key, value),) = link.metadata()
    (out / "header_key").write_text(key)
    (out / "header_value").write_text(value)
    (out / "target").write_text(stack.triton.grpc_target)
    (out / "max_tokens").write_text(str(MAX_TOKENS))
    request = build_infer_request(
        EngineRequest(SYNTH, "native", tuple(prompt), MAX_TOKENS, -1, 0, GREEDY)
    )
    (out / "request.bin").write_bytes(request.SerializeToString())
    return request


def load_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    h, stats = ctypes.c_void_p, ctypes.POINTER(Stats)
    lib.probe_create.restype = h
    lib.probe_create.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.probe_run.argtypes = [h, ctypes.c_double, stats]
    lib.probe_set_flush_us.argtypes = [h, ctypes.c_long]
    lib.probe_start.argtypes = [h, ctypes.c_double]
    lib.probe_running.argtypes = [h]
    lib.probe_drain.restype = ctypes.c_long
    lib.probe_drain.argtypes = [h, ctypes.POINTER(ctypes.c_int32), ctypes.c_long]
    lib.probe_join.argtypes = [h, stats]
    return lib


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


Way = Callable[[float], Awaitable[tuple[int, int, int]]]  # seconds → (tokens, requests, bad)


async def compare(lib: ctypes.CDLL, out: Path, prompt: list[int], args: argparse.Namespace) -> None:
    creds = grpc.ssl_channel_credentials(
        (out / "ca.pem").read_bytes(),
        (out / "client.key").read_bytes(),
        (out / "client.pem").read_bytes(),
    )
    metadata = (((out / "header_key").read_text(), (out / "header_value").read_text()),)
    channel = grpc.aio.secure_channel((out / "target").read_text(), creds)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    ready = await stub.ServerReady(service_pb2.ServerReadyRequest(), metadata=metadata)
    assert ready.ready, "Triton not ready"
    ids = itertools.count()

    async def python_aio(seconds: float) -> tuple[int, int, int]:
        tokens = requests = bad = 0
        stop = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal tokens, requests, bad
            while time.monotonic() < stop:
                call = stub.ModelStreamInfer(metadata=metadata)
                request = EngineRequest(
                    SYNTH, f"a{next(ids)}", tuple(prompt), MAX_TOKENS, -1, 0, GREEDY
                )
                await call.write(build_infer_request(request))
                await call.done_writing()
                n, final = 0, False
                while not final:
                    got, final = parse_stream_response(await call.read())
                    n += len(got)
                # As the façade and the bench's direct path do: a cancel right after the final
                # response can leak the request in Triton 2.51 (engine_client.let_finish).
                let_finish(call)
                tokens, requests, bad = tokens + n, requests + 1, bad + (n != MAX_TOKENS)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return tokens, requests, bad

    handle = lib.probe_create(str(out).encode(), CONCURRENCY, 1)
    assert handle, "probe_create failed (see stderr)"
    lib.probe_set_flush_us(handle, FLUSH_US)
    stats = Stats()
    loop = asyncio.get_running_loop()
    buf = (ctypes.c_int32 * (3 * 65536))()

    async def native_blocking(seconds: float) -> tuple[int, int, int]:
        await asyncio.to_thread(lib.probe_run, handle, seconds, ctypes.byref(stats))
        return stats.tokens, stats.requests, stats.bad

    async def native_to_asyncio(seconds: float) -> tuple[int, int, int]:
        queues: list[asyncio.Queue[tuple[int, int] | None]] = [
            asyncio.Queue() for _ in range(CONCURRENCY)
        ]
        counts = [0] * CONCURRENCY
        finals = 0
        finished = loop.create_future()

        async def consumer(i: int) -> None:
            nonlocal finals
            while (item := await queues[i].get()) is not None:
                counts[i] += item[0]
                finals += item[1]

        def on_ready() -> None:  # eventfd readable: drain every queued event in one call
            while True:
                n = lib.probe_drain(handle, buf, len(buf))
                events = buf[:n]
                for j in range(0, n, 3):
                    queues[events[j]].put_nowait((events[j + 1], events[j + 2]))
                if lib.probe_running(handle) or finished.done():
                    return
                if n == 0:  # the C++ run ended and everything was drained
                    for q in queues:
                        q.put_nowait(None)
                    finished.set_result(None)
                    return

        consumers = [asyncio.create_task(consumer(i)) for i in range(CONCURRENCY)]
        efd = lib.probe_start(handle, seconds)
        loop.add_reader(efd, on_ready)
        await finished
        await asyncio.gather(*consumers)
        loop.remove_reader(efd)
        lib.probe_join(handle, ctypes.byref(stats))
        assert sum(counts) == stats.tokens and finals == stats.requests, "events lost"
        return stats.tokens, stats.requests, stats.bad

    ways: list[tuple[str, Way]] = [
        ("A python grpc.aio, a stream per request", python_aio),
        ("B native C++ reader, Python blocked", native_blocking),
        ("C native C++ reader -> eventfd batches -> asyncio queues", native_to_asyncio),
    ]
    await python_aio(1.0)  # warm-up: connections, caches
    await native_blocking(1.0)
    for r in range(args.rounds):
        for name, way in ways:
            load = os.getloadavg()[0]
            c0, t0, w0 = process_cpu(), time.thread_time(), time.monotonic()
            tokens, requests, bad = await way(args.seconds)
            cpu, loop_cpu, wall = process_cpu() - c0, time.thread_time() - t0, time.monotonic() - w0
            print(
                f"round {r + 1}  {name:56s} {tokens / wall:6.0f} tok/s  process "
                f"{1e6 * cpu / tokens:6.1f} µs/token  event loop {1e6 * loop_cpu / tokens:5.1f} "
                f"µs/token  ({requests} requests, {bad} short)  load {load:.1f}",
                flush=True,
            )
    await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autoglm-native-probe-") as tmp:
        work = Path(tmp)
        lib = load_library(build(work))
        stack_at = synthetic_stack(work / "stack", MODEL_DIR, SYNTH, engine_link="tls")
        with stack_at as (stack, prompt):
            export_link(stack, prompt, work / "link")
            asyncio.run(compare(lib, work / "link", prompt, args))


if __name__ == "__main__":
    main()
