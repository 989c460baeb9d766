"""Results as JSON and as a text table (pure formatting; writing files is the caller's)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from autoglm.bench import image_report
from autoglm.bench.stats import Summary
from autoglm.bench.targets import Check, cores_for, tokens_per_core_s


@dataclass(frozen=True, slots=True)
class RunResult:
    scenario: str  # paced | unpaced | cpu-model | images
    model: str
    level: str  # "c=64" or "rate=20/s"
    # direct | facade (the gRPC API) | openai (the OpenAI front door, SSE); with --floor also
    # relay | hop | control (FLOORS)
    path: str
    summary: Summary
    foreign_cpu_s: float = math.nan  # machine CPU used by other processes in the window


@dataclass(slots=True)
class BenchReport:
    machine: dict[str, Any]
    config: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    checks: dict[str, list[Check]] = field(default_factory=dict)  # "<scenario> <level>" → checks
    notes: list[str] = field(default_factory=list)
    # The image scenario's own figures (image_runner.py): "cost" (image_cost.measure) and
    # "image_seconds" (level → path → the façade's recorded image time, image_report.py).
    images: dict[str, Any] = field(default_factory=dict)

    def pairs(self, path: str = "facade") -> list[tuple[RunResult, RunResult]]:
        """(direct, `path`) runs of the same scenario and level, in run order; the image
        scenario has its own comparison (image_report.py), per request rather than per token."""
        direct = {(r.scenario, r.level): r for r in self.runs if r.path == "direct"}
        return [
            (direct[(r.scenario, r.level)], r)
            for r in self.runs
            if r.path == path
            and (r.scenario, r.level) in direct
            and r.scenario != image_report.SCENARIO
        ]

    def openai_triples(self) -> list[tuple[RunResult, RunResult | None, RunResult]]:
        """(direct, gRPC façade or None, OpenAI) runs of the same scenario and level."""
        grpc = {(r.scenario, r.level): r for r in self.runs if r.path == "facade"}
        return [(d, grpc.get((o.scenario, o.level)), o) for d, o in self.pairs("openai")]


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def run_json(r: RunResult) -> dict[str, Any]:
    s = r.summary
    d = asdict(r)
    d["summary"].update(
        tokens_per_s=s.tokens_per_s,
        requests_per_s=s.requests_per_s,
        cpu_us_per_token={k: s.cpu_us_per_token(k) for k in s.cpu},
    )
    return d


def to_json(report: BenchReport) -> dict[str, Any]:
    return _clean(
        {
            "machine": report.machine,
            "config": report.config,
            "runs": [run_json(r) for r in report.runs],
            "comparisons": [comparison(d, f) for d, f in report.pairs()],
            "openai_comparisons": [openai_comparison(*t) for t in report.openai_triples()],
            "floor_comparisons": [
                floor_comparison(d, r) for path in FLOORS for d, r in report.pairs(path)
            ],
            "image_comparisons": image_report.image_comparisons(report),
            "images": report.images,
            "checks": {k: [asdict(c) for c in v] for k, v in report.checks.items()},
            "notes": report.notes,
        }
    )


def _against_direct(direct: RunResult, other: RunResult) -> dict[str, Any]:
    """What `other` (the façade, or the bare relay) adds to the direct path, same level."""
    d, o = direct.summary, other.summary
    return {
        "scenario": other.scenario,
        "level": other.level,
        "tokens_per_s_ratio": o.tokens_per_s / d.tokens_per_s if d.tokens_per_s else math.nan,
        "added_ttft_p50_ms": o.ttft_ms.p50 - d.ttft_ms.p50,
        "added_ttft_p99_ms": o.ttft_ms.p99 - d.ttft_ms.p99,
        "added_itl_p50_ms": o.itl_ms.p50 - d.itl_ms.p50,
        "added_itl_p99_ms": o.itl_ms.p99 - d.itl_ms.p99,
        "added_e2e_p50_ms": o.e2e_ms.p50 - d.e2e_ms.p50,
    }


def comparison(direct: RunResult, facade: RunResult) -> dict[str, Any]:
    d, f = direct.summary, facade.summary
    return {
        **_against_direct(direct, facade),
        "facade_cpu_us_per_token": f.cpu_us_per_token("facade"),
        "direct_consumer_cpu_us_per_token": d.cpu_us_per_token("loadgen"),
        "cpu_per_token_ratio": f.cpu_us_per_token("facade") / d.cpu_us_per_token("loadgen")
        if d.output_tokens and d.cpu.get("loadgen")
        else math.nan,
        "facade_tokens_per_core_s": tokens_per_core_s(f),
        "facade_cores_for_h100": cores_for(f),
        # Coalescing: relayed tokens per streamed message (the direct path has one per response).
        "facade_tokens_per_message": f.tokens_per_chunk,
        # What limited the latencies: how many cores the machine kept busy in the window.
        "direct_path_cores_busy": d.cores_busy,
        "facade_path_cores_busy": f.cores_busy,
    }


def openai_comparison(
    direct: RunResult, grpc: RunResult | None, openai: RunResult
) -> dict[str, Any]:
    """The OpenAI path against direct, and against the gRPC path (the same façade process)."""
    d, o = direct.summary, openai.summary
    g = grpc.summary if grpc is not None else None
    nan = math.nan
    sse_cpu = o.cpu_us_per_token("facade")
    grpc_cpu = g.cpu_us_per_token("facade") if g is not None else nan
    return {
        **_against_direct(direct, openai),
        "facade_cpu_us_per_token": sse_cpu,
        "grpc_facade_cpu_us_per_token": grpc_cpu,
        "cpu_per_token_vs_grpc": sse_cpu / grpc_cpu if grpc_cpu else nan,
        "grpc_added_ttft_p50_ms": g.ttft_ms.p50 - d.ttft_ms.p50 if g is not None else nan,
        "ttft_p50_minus_grpc_ms": o.ttft_ms.p50 - g.ttft_ms.p50 if g is not None else nan,
        "tokens_per_s_vs_grpc": o.tokens_per_s / g.tokens_per_s if g and g.tokens_per_s else nan,
        # the load generator's own cost per token on each path (it shares the machine)
        "client_cpu_us_per_token": o.cpu_us_per_token("loadgen"),
        "grpc_client_cpu_us_per_token": g.cpu_us_per_token("loadgen") if g is not None else nan,
        "tokens_per_message": o.tokens_per_chunk,
        "cores_busy": o.cores_busy,
    }


# `--paths`: direct Triton (the baseline of every figure), the façade's gRPC API, its OpenAI
# front door (SSE).
PATHS = ("direct", "facade", "openai")

# With --floor, what the façade is read against besides the direct path (runner.py).
FLOORS = {
    "relay": "a bare grpc.aio relay (bench/bare_relay.py: mTLS, tokenize, Triton, ids; "
    "no auth, tracing, metrics, text): the floor under any grpc.aio façade",
    "hop": "the direct consumer through a process that only forwards bytes (bench/byte_hop.py): "
    "the floor under any Python process on the way",
    "control": "the direct path again: what this run reads when nothing is added (its noise)",
}


def _cpu_group(path: str) -> str:
    """The process group a path's own hop is billed to (the direct consumer: the load generator)."""
    return path if path in ("relay", "hop") else "facade" if path == "facade" else "loadgen"


def floor_comparison(direct: RunResult, other: RunResult) -> dict[str, Any]:
    """What a floor path (FLOORS) adds to the direct path, same level."""
    group = _cpu_group(other.path)
    return {
        **_against_direct(direct, other),
        "path": other.path,
        "cpu_group": group,
        "cpu_us_per_token": other.summary.cpu_us_per_token(group),
        "cores_busy": other.summary.cores_busy,
    }


_HEADER = (
    f"{'scenario':<9} {'level':<8} {'path':<7} {'ok':>6} {'err':>4} {'tok/s':>8} {'req/s':>7} "
    f"{'TTFT p50/p90/p99 ms':>22} {'ITL p50/p90/p99 ms':>20} {'E2E p50/p99 ms':>15} "
    f"{'CPU µs/tok fac/trt/gen':>23} {'foreign s':>9}"
)


def _f(v: float, width: int = 0, digits: int = 1) -> str:
    return f"{'-':>{width}}" if math.isnan(v) else f"{v:>{width}.{digits}f}"


def _triple(values: tuple[float, ...], digits: int) -> str:
    return "/".join(_f(v, 0, digits) for v in values)


def _row(r: RunResult) -> str:
    s = r.summary
    ttft = _triple((s.ttft_ms.p50, s.ttft_ms.p90, s.ttft_ms.p99), 1)
    itl = _triple((s.itl_ms.p50, s.itl_ms.p90, s.itl_ms.p99), 2)
    e2e = _triple((s.e2e_ms.p50, s.e2e_ms.p99), 0)
    first = r.path if r.path in ("relay", "hop") else "facade"  # the hop being measured
    cpu = _triple(tuple(s.cpu_us_per_token(k) for k in (first, "triton", "loadgen")), 0)
    return (
        f"{r.scenario:<9} {r.level:<8} {r.path:<7} {s.ok:>6} {sum(s.errors.values()):>4} "
        f"{s.tokens_per_s:>8.0f} {s.requests_per_s:>7.1f} {ttft:>22} {itl:>20} {e2e:>15} "
        f"{cpu:>23} {_f(r.foreign_cpu_s, 9, 2)}"
    )


def table(report: BenchReport) -> str:
    lines = [_HEADER]
    for r in report.runs:
        lines.append(_row(r))
        if r.summary.errors:
            lines.append(f"{'':<26}errors: {r.summary.errors}")
    if report.pairs():  # (the image scenario alone has its own lines: image_lines)
        lines.append("")
        lines.append("façade vs direct (same run):")
    nproc = report.machine.get("nproc")
    of_cores = f" of {nproc}" if nproc else ""
    for d, f in report.pairs():
        c = comparison(d, f)
        lines.append(
            f"  {c['scenario']:<9} {c['level']:<8} tok/s ×{_f(c['tokens_per_s_ratio'], 0, 3)}  "
            f"+TTFT p50 {_f(c['added_ttft_p50_ms'], 0, 2)} ms  "
            f"+ITL p99 {_f(c['added_itl_p99_ms'], 0, 2)} ms  "
            f"CPU/token façade {_f(c['facade_cpu_us_per_token'], 0, 0)} µs vs direct consumer "
            f"{_f(c['direct_consumer_cpu_us_per_token'], 0, 0)} µs "
            f"(×{_f(c['cpu_per_token_ratio'], 0, 2)}); "
            f"{_f(c['facade_tokens_per_core_s'], 0, 0)} tok/s per façade core, "
            f"{_f(c['facade_cores_for_h100'], 0, 2)} cores for 28k tok/s, "
            f"{_f(c['facade_tokens_per_message'], 0, 2)} tok/message; "
            f"cores busy: direct path {_f(c['direct_path_cores_busy'], 0, 2)}, façade path "
            f"{_f(c['facade_path_cores_busy'], 0, 2)}{of_cores}"
        )
    triples = report.openai_triples()
    if triples:
        head = "OpenAI front door (SSE, /v1/completions) vs direct and the gRPC path (same run):"
        lines += ["", head]
    for t in triples:
        c = openai_comparison(*t)
        lines.append(
            f"  {c['scenario']:<9} {c['level']:<8} tok/s ×{_f(c['tokens_per_s_ratio'], 0, 3)}  "
            f"+TTFT p50 {_f(c['added_ttft_p50_ms'], 0, 2)} ms "
            f"(gRPC {_f(c['grpc_added_ttft_p50_ms'], 0, 2)} ms)  "
            f"+ITL p99 {_f(c['added_itl_p99_ms'], 0, 2)} ms  "
            f"CPU/token façade {_f(c['facade_cpu_us_per_token'], 0, 0)} µs vs gRPC "
            f"{_f(c['grpc_facade_cpu_us_per_token'], 0, 0)} µs "
            f"(×{_f(c['cpu_per_token_vs_grpc'], 0, 2)}); client "
            f"{_f(c['client_cpu_us_per_token'], 0, 0)} µs vs gRPC client "
            f"{_f(c['grpc_client_cpu_us_per_token'], 0, 0)} µs; "
            f"{_f(c['tokens_per_message'], 0, 2)} tok/message; "
            f"cores busy {_f(c['cores_busy'], 0, 2)}{of_cores}"
        )
    for path, what in FLOORS.items():
        floor = report.pairs(path)
        if floor:
            lines += ["", f"{path}: {what}; vs direct (same run):"]
        for d, r in floor:
            c = floor_comparison(d, r)
            lines.append(
                f"  {c['scenario']:<9} {c['level']:<8} "
                f"tok/s ×{_f(c['tokens_per_s_ratio'], 0, 3)}  "
                f"+TTFT p50 {_f(c['added_ttft_p50_ms'], 0, 2)} ms  "
                f"+ITL p99 {_f(c['added_itl_p99_ms'], 0, 2)} ms  "
                f"CPU/token {c['cpu_group']} {_f(c['cpu_us_per_token'], 0, 0)} µs; "
                f"cores busy {_f(c['cores_busy'], 0, 2)}{of_cores}"
            )
    lines += image_report.image_lines(report)
    if report.checks:
        lines.append("")
        lines.append("targets:")
        for key, checks in report.checks.items():
            for check in checks:
                lines.append(f"  {key}: {check.line()}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)
