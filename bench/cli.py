"""`autoglm bench`: flags → BenchOptions → harness.run_bench."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoglm.bench.report import PATHS
from autoglm.bench.workload import LengthDist
from autoglm.server.telemetry.span_export import DEFAULT_SPAN_EXPORT, SPAN_EXPORTS

# build_engine/tiny_vlm.py TINY_VLM_NAME (not imported: it pulls in torch for `--help`)
VL_MODEL_NAME = "glm-4.1v-tiny-random"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use e.g. 1,8,32") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need positive integers")
    return values


def _length(text: str) -> LengthDist:
    try:
        return LengthDist.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def require_extra() -> None:
    """ImportError naming what of the [bench] extra (pyproject.toml) is missing: matplotlib for
    the plots, py-spy for profiles. Checked before a run, so that a missing one is reported at
    once with the command that installs it, not after minutes of load."""
    import importlib.util

    from autoglm.bench.profile import py_spy

    missing = [] if importlib.util.find_spec("matplotlib") else ["matplotlib"]
    if py_spy() is None:
        missing.append("py-spy")
    if missing:
        raise ImportError(f"missing: {', '.join(missing)}")


def build_parser() -> argparse.ArgumentParser:
    b = argparse.ArgumentParser(
        prog="autoglm bench",
        description="Starts its own Triton (synthetic engine, optionally the real CPU model) and "
        "façade (subprocess, mTLS + token + tracing) on loopback and measures direct Triton, the "
        "façade's gRPC API and its OpenAI front door side by side.",
    )
    b.add_argument(
        "--scenario",
        default="paced,unpaced",
        help="comma list of paced, unpaced, cpu-model, images (the agent's screenshot step on "
        "the tiny GLM-4.1V), lora (the CPU model alone, with one LoRA adapter and with 8 mixed "
        "across streams); default paced,unpaced",
    )
    b.add_argument(
        "--concurrency",
        type=_ints,
        default=(1, 8, 32, 64, 128),
        help="streams in flight, per level (synthetic scenarios)",
    )
    b.add_argument("--rate", type=float, help="requests/s (Poisson) instead of concurrency")
    b.add_argument(
        "--cpu-concurrency", type=_ints, default=(1, 4), help="levels for the real CPU model"
    )
    b.add_argument(
        "--tokens-per-second",
        type=float,
        default=40.0,
        help="paced synthetic engine: tokens/s per stream",
    )
    b.add_argument(
        "--prompt-len",
        type=_length,
        default=LengthDist(128, 128),
        help="prompt tokens: N or LOW-HIGH (uniform)",
    )
    b.add_argument(
        "--output-len",
        type=_length,
        default=LengthDist(64, 64),
        help="output tokens (synthetic): N or LOW-HIGH",
    )
    b.add_argument(
        "--cpu-output-len",
        type=_length,
        default=LengthDist(32, 32),
        help="output tokens (real CPU model): N or LOW-HIGH",
    )
    b.add_argument(
        "--image-concurrency",
        type=_ints,
        default=(1, 2),
        help="levels for the images scenario (streams in flight)",
    )
    b.add_argument(
        "--image-output-len",
        type=_length,
        default=LengthDist(32, 32),
        help="output tokens (images scenario): N or LOW-HIGH",
    )
    b.add_argument(
        "--screenshots",
        type=int,
        default=4,
        help="images scenario: different 1080x2400 screenshots, drawn from --seed, in turn",
    )
    b.add_argument("--warmup", type=float, default=3.0, help="seconds per run, not measured")
    b.add_argument(
        "--ramp-up",
        type=float,
        default=None,
        help="concurrency mode: start the streams evenly over this many seconds of the "
        "warm-up (default: one paced request's length for paced, 0 otherwise; 0 = all at once)",
    )
    g = b.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    g.add_argument("--requests", type=int, help="measured requests per run (instead)")
    b.add_argument(
        "--check-concurrency",
        type=int,
        default=64,
        help="level at which the paced targets are judged",
    )
    b.add_argument(
        "--paths",
        default=",".join(PATHS),
        help="comma list of direct (always), facade (the gRPC API), openai (the OpenAI front "
        "door, SSE); default %(default)s",
    )
    b.add_argument(
        "--facade-workers",
        type=int,
        default=1,
        help="façade processes sharing its port (`autoglm serve --workers N`, SO_REUSEPORT)",
    )
    b.add_argument(
        "--facade-span-export",
        choices=SPAN_EXPORTS,
        default=DEFAULT_SPAN_EXPORT,
        help="how the façade exports its spans (`autoglm serve --span-export`); "
        "default: %(default)s",
    )
    b.add_argument(
        "--engine-link",
        choices=("unix", "tls"),
        default="unix",
        help="how both paths reach Triton: its unix socket (as `autoglm dev` runs it, Triton on "
        "this host) or mTLS over loopback TCP (as to a Triton on another host)",
    )
    b.add_argument(
        "--floor",
        action="store_true",
        help="also run the synthetic scenarios through the floors: a bare grpc.aio relay (bench "
        "tool: mTLS, tokenize, Triton, ids; nothing else) and a process forwarding bytes to "
        "Triton, and the direct path a second time (this run's own noise)",
    )
    b.add_argument(
        "--profile-seconds",
        type=float,
        default=0.0,
        help="> 0: py-spy the façade for this long (extra, unmeasured runs)",
    )
    b.add_argument(
        "--model-dir",
        type=Path,
        help="SmolLM2 HF folder (default <home>/models/SmolLM2-135M-Instruct)",
    )
    b.add_argument(
        "--vl-model-dir",
        type=Path,
        help="images scenario: the vision-language HF folder (default "
        "<home>/models/glm-4.1v-tiny-random, `autoglm model prepare`)",
    )
    b.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for results.json, results.txt and the PNG plots",
    )
    b.add_argument("--workdir", type=Path, help="keep Triton's repository and logs here")
    b.add_argument("--no-plots", action="store_true")
    b.add_argument("--seed", type=int, default=0)
    return b


def main(argv: list[str], *, home: Path) -> int:
    args = build_parser().parse_args(argv)
    args.home = home
    return run(args)


def run(args: argparse.Namespace) -> int:
    from autoglm.bench.harness import BenchOptions, run_bench

    opts = BenchOptions(
        model_dir=args.model_dir or args.home / "models" / "SmolLM2-135M-Instruct",
        out_dir=args.out,
        scenarios=tuple(s.strip() for s in args.scenario.split(",") if s.strip()),
        concurrency=args.concurrency,
        rate=args.rate,
        cpu_concurrency=args.cpu_concurrency,
        tokens_per_second=args.tokens_per_second,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        cpu_output_len=args.cpu_output_len,
        vl_model_dir=args.vl_model_dir or args.home / "models" / VL_MODEL_NAME,
        image_concurrency=args.image_concurrency,
        image_output_len=args.image_output_len,
        screenshots=args.screenshots,
        warmup_s=args.warmup,
        ramp_up_s=args.ramp_up,
        duration_s=None if args.requests else args.duration,
        num_requests=args.requests,
        check_concurrency=args.check_concurrency,
        paths=tuple(p.strip() for p in args.paths.split(",") if p.strip()),
        facade_workers=args.facade_workers,
        facade_span_export=args.facade_span_export,
        engine_link=args.engine_link,
        floor=args.floor,
        profile_seconds=args.profile_seconds,
        plots=not args.no_plots,
        seed=args.seed,
        workdir=args.workdir,
    )
    report = run_bench(opts, log=lambda line: print(line, flush=True))
    # The bench measures: missed targets are findings (printed), not a failure of the command;
    # requests that failed are (exit 1).
    errors = sum(sum(r.summary.errors.values()) for r in report.runs)
    return 1 if errors else 0
