"""One benchmark run: every scenario × load level on every path, side by side, in one process.

Per level, the direct path, the façade's gRPC API ("facade") and its OpenAI front door
("openai", SSE; `--paths` chooses among the three; with --floor also the floors and the direct
path again: `_floor_paths`) run back to back on the same Triton (the order reverses between
levels so no path always runs last); the CPU of the façade, of
Triton (with its python-backend stubs) and of this process (the load generator = the bare
direct consumer) is read from /proc at the edges of each measurement window, together with the
machine's total, so time taken by other people's processes shows up as "foreign" CPU.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from autoglm.bench import profile
from autoglm.bench.direct import DirectPath
from autoglm.bench.facade import FacadePath
from autoglm.bench.loadgen import LoadSpec, run_load
from autoglm.bench.openai_sse import OpenAIPath
from autoglm.bench.procstat import CpuMeter, descendants
from autoglm.bench.report import FLOORS, PATHS, BenchReport, RunResult
from autoglm.bench.stack import BenchStack, EngineModel
from autoglm.bench.stats import summarize
from autoglm.bench.targets import openai_checks, paced_checks, scaleout_checks, unpaced_checks
from autoglm.bench.workload import LengthDist, Workload
from autoglm.server.models import ServedModel

Log = Callable[[str], None]
Path_ = DirectPath | FacadePath | OpenAIPath


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str  # "paced" | "unpaced" | "cpu-model"
    model: EngineModel
    loads: tuple[LoadSpec, ...]
    output_len: LengthDist


@dataclass(frozen=True, slots=True)
class RunConfig:
    scenarios: tuple[Scenario, ...]
    prompt_len: LengthDist
    check_concurrency: int = 64  # the level the paced targets are judged at
    paths: tuple[str, ...] = PATHS  # which of PATHS run (direct always: the baseline)
    profile_seconds: float = 0.0  # > 0: py-spy the façade (extra, unmeasured runs)
    profile_dir: Path | None = None
    seed: int = 0


def _workload(cfg: RunConfig, sc: Scenario, served: ServedModel) -> Workload:
    tok = served.encoder.tokenizer

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    def decode(ids: list[int]) -> str:
        return tok.decode(ids)

    return Workload(cfg.prompt_len, sc.output_len, encode, decode, seed=cfg.seed)


async def _one(
    stack: BenchStack,
    path: Path_,
    scenario: Scenario,
    load: LoadSpec,
    workload: Workload,
) -> RunResult:
    assert stack.triton is not None and stack.triton.pid is not None
    triton = [stack.triton.pid, *descendants(stack.triton.pid)]
    groups = {"facade": stack.facade_pids(), "triton": triton, "loadgen": [os.getpid()]}
    if relay := stack.relay_pids():
        groups["relay"] = relay
    if hop := stack.hop_pids():
        groups["hop"] = hop
    meter = CpuMeter(groups)
    result = await run_load(path.stream, workload, load, meter.mark)
    summary = summarize(result.records, result.window, meter.delta())
    return RunResult(
        scenario.name, scenario.model.name, load.label, path.name, summary, meter.foreign()
    )


async def run_all(
    stack: BenchStack,
    served: dict[str, ServedModel],
    cfg: RunConfig,
    report: BenchReport,
    log: Log,
) -> None:
    step = 0
    for sc in cfg.scenarios:
        m = served[sc.model.name]
        assert stack.triton is not None
        direct = DirectPath(stack.triton.grpc_target, stack.link, sc.model.name, m.end_id, m.pad_id)
        facade_paths = _facade_paths(stack, sc, cfg.paths)
        openai = next((p for p in facade_paths if isinstance(p, OpenAIPath)), None)
        paths: tuple[Path_, ...] = (direct, *facade_paths)
        if sc.model.tokens_per_second is not None:  # the synthetic engine
            paths += _floor_paths(stack, sc, m)
        try:
            for load in sc.loads:
                order = paths if step % 2 == 0 else paths[::-1]
                step += 1
                pair: dict[str, RunResult] = {}
                for path in order:
                    t = time.monotonic()
                    r = await _one(stack, path, sc, load, _workload(cfg, sc, m))
                    pair[path.name] = r
                    report.runs.append(r)
                    if disturbed(r):
                        report.notes.append(
                            f"DISTURBED: {sc.name} {load.label} {path.name}: other processes used "
                            f"{r.foreign_cpu_s:.1f} CPU-s in the {r.summary.duration_s:.0f} s "
                            "window; rerun on a quiet machine"
                        )
                    s = r.summary
                    log(
                        f"{sc.name:<9} {load.label:<8} {path.name:<7} {s.ok:>5} ok "
                        f"{sum(s.errors.values())} err {s.tokens_per_s:8.0f} tok/s "
                        f"TTFT p50 {s.ttft_ms.p50:7.1f} ms ITL p99 {s.itl_ms.p99:6.1f} ms "
                        f"foreign CPU {r.foreign_cpu_s:.2f} s ({time.monotonic() - t:.0f} s)"
                    )
                _judge(cfg, sc, load, pair, report)
            if cfg.profile_seconds > 0 and sc.name in ("paced", "unpaced"):
                for path in facade_paths:
                    await _profile(stack, path, sc, cfg, _workload(cfg, sc, m), report, log)
        finally:
            if openai is not None:
                report.notes.append(
                    f"openai path, {sc.name}: {openai.connections_opened} TLS connections opened "
                    "(HTTP/1.1 keep-alive: one per stream in flight, reused across requests)"
                )
            for path in paths:
                await path.close()


def _facade_paths(
    stack: BenchStack, sc: Scenario, chosen: tuple[str, ...]
) -> tuple[FacadePath | OpenAIPath, ...]:
    """The façade's paths `--paths` chose: its gRPC API, its OpenAI front door (SSE)."""
    out: list[FacadePath | OpenAIPath] = []
    if "facade" in chosen:
        workers = stack.opts.facade_workers
        out.append(
            FacadePath(
                stack.facade_endpoint,
                stack.pki,
                stack.token,
                sc.model.name,
                # 4 connections per worker: the kernel hashes each to a worker, roughly evenly.
                connections=1 if workers == 1 else 4 * workers,
            )
        )
    if "openai" in chosen:
        assert stack.openai_endpoint is not None, "StackOptions.openai"
        # HTTP/1.1: one keep-alive connection per stream in flight, so the kernel spreads
        # them over the workers as it does the gRPC path's connections.
        out.append(OpenAIPath(stack.openai_endpoint, stack.pki, stack.token, sc.model.name))
    return tuple(out)


def _floor_paths(stack: BenchStack, sc: Scenario, m: ServedModel) -> tuple[Path_, ...]:
    """With --floor: what the façade is read against besides the direct path.

    - relay: the façade's own client against bare_relay.py (the floor under any grpc.aio
      façade);
    - hop: the direct path's consumer through byte_hop.py (the floor under any Python process
      on the way);
    - control: the direct path again, on a channel of its own (the run's own noise: what
      "added" reads when nothing is added).
    """
    if stack.relay_endpoint is None or stack.hop_target is None:
        return ()
    assert stack.triton is not None
    name = sc.model.name
    return (
        FacadePath(stack.relay_endpoint, stack.pki, stack.token, name, name="relay"),
        DirectPath(stack.hop_target, stack.link, name, m.end_id, m.pad_id, name="hop"),
        DirectPath(stack.triton.grpc_target, stack.link, name, m.end_id, m.pad_id, name="control"),
    )


# Other processes may use this much of the machine's CPU time in a window before a run counts
# as disturbed (the bench's own three processes are accounted for exactly).
DISTURBED_SHARE = 0.05


def disturbed(r: RunResult) -> bool:
    capacity = r.summary.duration_s * (os.cpu_count() or 1)
    return r.foreign_cpu_s > DISTURBED_SHARE * capacity


def _judge(
    cfg: RunConfig, sc: Scenario, load: LoadSpec, pair: dict[str, RunResult], report: BenchReport
) -> None:
    d = pair["direct"].summary
    f = pair["facade"].summary if "facade" in pair else None
    key = f"{sc.name} {load.label}"
    if sc.name == "paced" and load.concurrency == cfg.check_concurrency:
        if f is not None:
            floors = {path: pair[path].summary for path in FLOORS if path in pair}
            report.checks[key] = paced_checks(d, f, floors)
        if "openai" in pair:
            report.checks[f"{key} openai"] = openai_checks(d, f, pair["openai"].summary)
    elif sc.name == "unpaced" and f is not None:
        report.checks[key] = unpaced_checks(d, f)
        if load.concurrency == cfg.check_concurrency:
            report.checks[f"{key} scale-out"] = scaleout_checks(f)


async def _profile(
    stack: BenchStack,
    path: Path_,
    sc: Scenario,
    cfg: RunConfig,
    workload: Workload,
    report: BenchReport,
    log: Log,
) -> None:
    """py-spy the façade under the check level's load on one of its paths (the gRPC API or the
    OpenAI front door; not measured: sampling perturbs it)."""
    assert cfg.profile_dir is not None
    cfg.profile_dir.mkdir(parents=True, exist_ok=True)
    stem = "facade" if path.name == "facade" else f"facade-{path.name}"
    out = cfg.profile_dir / f"{stem}-{sc.name}.collapsed"
    load = LoadSpec(
        concurrency=cfg.check_concurrency, warmup_s=1.0, duration_s=cfg.profile_seconds + 2.0
    )
    workers = stack.opts.facade_workers > 1
    spy = profile.start_py_spy(stack.facade_pid, cfg.profile_seconds, out, subprocesses=workers)
    await run_load(path.stream, workload, load)
    _, err = await asyncio.to_thread(spy.communicate)
    if spy.returncode != 0 or not out.is_file():
        report.notes.append(f"py-spy failed ({sc.name}): {err.decode(errors='replace')[-300:]}")
        return
    samples, top = profile.summarize_collapsed(out.read_text())
    lines = [
        f"py-spy, façade ({path.name} path), {sc.name} c={cfg.check_concurrency}: "
        f"{samples} samples",
        f"{'self %':>7} {'total %':>8}  frame",
    ]
    lines += [f"{t.self_pct:7.1f} {t.total_pct:8.1f}  {t.frame}" for t in top]
    lines += ["", "by area (innermost known frame):"]
    lines += [f"{pct:7.1f}  {area}" for area, pct in profile.by_area(out.read_text()).items()]
    (cfg.profile_dir / f"{stem}-{sc.name}.top.txt").write_text("\n".join(lines) + "\n")
    log("\n".join(lines[:14]))


def scenario_loads(
    concurrencies: tuple[int, ...], rate: float | None, base: LoadSpec
) -> tuple[LoadSpec, ...]:
    if rate is not None:
        return (replace(base, concurrency=None, rate=rate),)
    return tuple(replace(base, concurrency=c, rate=None) for c in concurrencies)
