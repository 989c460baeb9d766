"""`autoglm serve`: its flags, where each setting comes from (flag > AUTOGLM_* > --config >
default), and the Settings the parsed flags make."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from autoglm.build_engine.switch_plan import GIB, SwitchPolicy
from autoglm.server import settings_sources
from autoglm.server.engine.canary_guard import GuardSettings
from autoglm.server.settings import (
    DEFAULT_GRPC_MAX_RECEIVE_BYTES,
    DEFAULT_OPENAI_MAX_BODY_BYTES,
    EVENT_LOOPS,
    TLS_MIN_VERSION_CHOICES,
    SettingsError,
)
from autoglm.server.telemetry.span_export import DEFAULT_SPAN_EXPORT, SPAN_EXPORTS
from autoglm.server.vision import ImageLimits

if TYPE_CHECKING:
    from autoglm.server.engine.link import EngineLink

# `autoglm serve` takes each setting from a flag, AUTOGLM_<FLAG>, this file, or the default.
CONFIG_ENV = "AUTOGLM_CONFIG"
NOT_SETTINGS = ("config", "print_config")  # serve flags that are no settings of their own
# The command's logger: its records keep the name they had before serve had a module of its own.
log = logging.getLogger("autoglm.server.cli")


def _engine_link(args: argparse.Namespace) -> EngineLink | None:
    """The engine link the `--triton*` flags describe; None when none of them is given."""
    if not (args.triton_ca or args.triton_cert or args.triton_key or args.triton_secret_file):
        return None
    from autoglm.server.engine.link import EngineLink, TlsFiles

    tls_flags = (
        ("--triton-ca", args.triton_ca),
        ("--triton-cert", args.triton_cert),
        ("--triton-key", args.triton_key),
    )
    unix = args.triton.strip().startswith("unix:")
    # A unix-socket link needs only the secret (the socket's directory is the lock); over
    # TCP the secret must never travel unencrypted, so all four are needed.
    wanted = () if unix and not any(v for _, v in tls_flags) else tls_flags
    missing = [
        flag
        for flag, value in (*wanted, ("--triton-secret-file", args.triton_secret_file))
        if value is None
    ]
    if missing:
        raise SettingsError(f"engine link: also give {', '.join(missing)}")
    return EngineLink(
        secret=args.triton_secret_file.read_text().strip(),
        tls=TlsFiles(
            ca_cert=args.triton_ca,
            server_cert=args.triton_ca,  # unused by the façade (it is Triton's)
            server_key=args.triton_ca,
            client_cert=args.triton_cert,
            client_key=args.triton_key,
        )
        if wanted
        else None,
    )


# `--model` options after the tokenizer folder: NAME=TRITON_MODEL:DIR,engine=vllm,…
_MODEL_OPTIONS = {
    "engine": str,
    "max_context_tokens": int,
    "max_output_tokens": int,
    "default_max_tokens": int,
    "image_max_pixels": int,
}


def _model_spec(item: str, spec_type: type) -> object:
    """One `--model NAME=TRITON_MODEL:TOKENIZER_DIR[,key=value…]` (keys: _MODEL_OPTIONS)."""
    head, *options = item.split(",")
    name, _, rest = head.partition("=")
    triton_model, _, tokenizer_dir = rest.partition(":")
    if not (name and triton_model and tokenizer_dir):
        raise SettingsError(
            f"--model: {item!r} is not NAME=TRITON_MODEL:TOKENIZER_DIR[,key=value…]"
        )
    values: dict[str, object] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in _MODEL_OPTIONS or not value:
            raise SettingsError(
                f"--model: {option!r} in {item!r} is not key=value with a key of"
                f" {sorted(_MODEL_OPTIONS)}"
            )
        try:
            values[key] = _MODEL_OPTIONS[key](value)
        except ValueError:
            raise SettingsError(f"--model: {key} must be an integer, got {value!r}") from None
        if _MODEL_OPTIONS[key] is int and values[key] < 1:  # type: ignore[operator]
            raise SettingsError(f"--model: {key} must be >= 1, got {value!r}")
    return spec_type(
        name=name, triton_model=triton_model, tokenizer_dir=Path(tokenizer_dir), **values
    )


def _reexec_for_grpc_tls(min_version: str, command_line: list[str] | None) -> None:
    """Start this command again in the same process (exec) with the environment under which
    grpc refuses TLS 1.2 handshakes (security/tls.py: grpc reads it only when first imported,
    and this process has imported it already). Only for a real command line (`command_line`
    None = called from Python: the per-call refusal still holds there)."""
    from autoglm.server.security.tls import grpc_handshake_environment

    env = grpc_handshake_environment(min_version, os.environ)
    if env is None or command_line is None:
        return
    log.info("restarting with grpc limited to TLS %s handshakes", min_version)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "autoglm.server.cli", *command_line], env)


def _oidc_settings(args: argparse.Namespace) -> object:
    """The OIDC settings of the `--oidc-*` flags; None without --oidc-issuer."""
    from autoglm.server.settings import OidcSettings

    if not args.oidc_issuer:
        others = ("--oidc-audience", args.oidc_audience), ("--oidc-config", args.oidc_config)
        given = [flag for flag, value in others if value]
        if given:
            raise SettingsError(f"{', '.join(given)}: needs --oidc-issuer")
        return None
    missing = [
        flag
        for flag, value in (
            ("--oidc-audience", args.oidc_audience),
            ("--oidc-config", args.oidc_config),
        )
        if not value
    ]
    if missing:
        raise SettingsError(f"--oidc-issuer: also give {', '.join(missing)}")
    return OidcSettings(
        issuer=args.oidc_issuer,
        audience=args.oidc_audience,
        config=args.oidc_config,
        ca_file=args.oidc_ca,
        clock_skew_s=args.oidc_clock_skew,
    )


def _serve(args: argparse.Namespace) -> int:
    from autoglm.server.app import run_event_loop, serve_until_signal, start_server
    from autoglm.server.models import ModelSpec
    from autoglm.server.security.limits import LimitSettings
    from autoglm.server.settings import Settings, TlsSettings
    from autoglm.server.telemetry import tracing

    models = [_model_spec(item, ModelSpec) for item in args.model]
    tls = None
    if args.tls_cert or args.tls_key:
        tls = TlsSettings(
            cert=args.tls_cert,
            key=args.tls_key,
            client_ca=args.client_ca,
            min_version=args.tls_min_version,
        )
    link = _engine_link(args)
    settings = Settings(
        listen=args.listen,
        triton_target=args.triton,
        engine_link=link,
        models=tuple(models),
        tls=tls,
        token_store=args.token_store,
        oidc=_oidc_settings(args),
        insecure_dev=args.insecure_dev,
        grace_period_s=args.grace,
        metrics_listen=args.metrics_listen or None,
        health_listen=args.health_listen,
        health_interval_s=args.health_interval,
        switch_policy=switch_policy(args),
        canary_guard=GuardSettings(
            window_s=args.canary_window,
            min_requests=args.canary_min_requests,
            max_error_rate_delta=args.canary_max_error_rate_delta,
            max_ttft_ratio=args.canary_max_ttft_ratio,
            interval_s=args.canary_check_interval,
        ),
        health_probe_timeout_s=args.health_probe_timeout,
        triton_tls_name=args.triton_tls_name,
        model_repository=args.model_repository,
        adapters_dir=args.adapters,
        profile_overrides=tuple(args.profile),
        limits=LimitSettings(
            max_in_flight=args.max_in_flight,
            max_streams_per_principal=args.max_streams_per_principal,
            requests_per_minute=args.requests_per_minute,
            max_tokens_per_request=args.max_tokens_per_request,
            tokens_per_minute=args.tokens_per_minute,
        ),
        shared_limits=_shared_limits(args),
        audit_dir=args.audit_dir,
        audit_text=args.audit_text,
        audit_required=args.audit_required,
        audit_anchor=args.audit_anchor or None,
        audit_anchor_interval_s=args.audit_anchor_interval,
        workers=args.workers,
        span_export=args.span_export,
        openai_listen=args.openai_listen or None,
        openai_require_client_cert=args.openai_require_client_cert,
        openai_max_body_bytes=args.openai_max_body_bytes,
        event_loop=args.event_loop,
        grpc_max_receive_bytes=args.grpc_max_receive_bytes,
        image_limits=ImageLimits(max_images=args.max_images, max_bytes=args.max_image_bytes),
    )
    settings.validate()  # --print-config refuses what serve would, with the same message
    if args.print_config:
        print(args.effective_config, end="")
        return 0
    if settings.tls is not None and not settings.insecure_dev:
        _reexec_for_grpc_tls(settings.tls.min_version, getattr(args, "command_line", None))
    if settings.workers > 1:
        from autoglm.server.workers import run_workers

        level = args.log_level or ("DEBUG" if args.verbose else "INFO")
        return run_workers(
            settings, level, args.log_format or ("text" if sys.stderr.isatty() else "json")
        )

    async def main() -> None:
        running = await start_server(settings)
        await serve_until_signal(running, settings.grace_period_s)

    # Configured by the standard OTEL_* variables; off without them.
    tracing.setup_tracing(tracing.TracingSettings(span_export=settings.span_export))
    try:
        run_event_loop(main(), settings.event_loop)
    finally:
        tracing.shutdown_tracing()
    return 0


def switch_policy(args: argparse.Namespace) -> SwitchPolicy:
    """How versions and canaries share the GPUs, from the serve flags (validated by Settings)."""
    return SwitchPolicy(
        reduced_min_ratio=args.reduced_kv_min_ratio,
        runtime_overhead_bytes=round(args.gpu_runtime_overhead_gib * GIB),
        drain_timeout_s=args.switch_drain_timeout,
    )


def _shared_limits(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from autoglm.server.security.shared_limits import SharedLimitSettings

    if not args.limits_redis:
        return None
    return SharedLimitSettings(
        redis_url=args.limits_redis,
        fallback=args.limits_redis_fallback,
        key_prefix=args.limits_redis_prefix,
        replicas=args.limits_replicas,
        lease_ttl_s=args.limits_lease_ttl,
        timeout_s=args.limits_redis_timeout,
        password_file=args.limits_redis_password_file,
    )


def add_span_export(parser: argparse.ArgumentParser) -> None:
    """--span-export, a flag of `autoglm dev` too."""
    parser.add_argument(
        "--span-export",
        choices=SPAN_EXPORTS,
        default=DEFAULT_SPAN_EXPORT,
        help="how the façade's spans are exported (when OTEL_* turn tracing on): child = "
        "encoded and sent by a child process, off the façade's GIL; batch = the SDK's "
        "BatchSpanProcessor in the façade's process (honours OTEL_BSP_*); default: %(default)s",
    )


def add_serve_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`autoglm serve` and its flags, in the order --help and --print-config list them."""
    serve = sub.add_parser("serve", help="run the façade in front of an existing Triton")
    for add_flags in (
        _add_config_flags,
        _add_address_flags,
        _add_health_flags,
        _add_model_flags,
        _add_security_flags,
        _add_front_door_flags,
        _add_audit_flags,
        _add_limit_flags,
        _add_process_flags,
    ):
        add_flags(serve)
    serve.set_defaults(func=_serve)
    serve.epilog = settings_sources.forms_epilog(settings_sources.options(serve, skip=NOT_SETTINGS))


def _add_config_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--config",
        type=Path,
        help="TOML file of settings, one key per flag (max_in_flight = 256); flags and "
        f"AUTOGLM_* variables override it; also ${CONFIG_ENV} (default: none)",
    )
    serve.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as TOML (where each comes from, secrets left out), "
        "validated, and exit",
    )


def _add_address_flags(serve: argparse.ArgumentParser) -> None:
    """Where the gRPC API listens, the Triton it fronts, where spans go."""
    serve.add_argument(
        "--listen", default="127.0.0.1:50051", help="host:port of the gRPC API (port 0 = any)"
    )
    serve.add_argument(
        "--triton",
        default="127.0.0.1:8001",
        help="Triton gRPC host:port; replicas: HOST:PORT,HOST:PORT… or dns:///NAME:PORT "
        "(round_robin over the healthy ones); Triton on this host: unix:/ABS/PATH (its socket, "
        "in a directory only the service's user may enter)",
    )
    serve.add_argument(
        "--triton-tls-name",
        help="name Triton's certificate must carry (replicas by address) "
        "(default: the target's host name)",
    )
    add_span_export(serve)


def _add_health_flags(serve: argparse.ArgumentParser) -> None:
    """Deep health checks and the canary rollback guard."""
    serve.add_argument(
        "--health-interval", type=float, default=2.0, help="seconds between deep health checks"
    )
    guard = GuardSettings()
    serve.add_argument(
        "--canary-window",
        type=float,
        default=guard.window_s,
        help="rollback guard: seconds of calls compared (canary vs stable)",
    )
    serve.add_argument(
        "--canary-min-requests",
        type=int,
        default=guard.min_requests,
        help="rollback guard: calls the canary needs in the window before it is judged",
    )
    serve.add_argument(
        "--canary-max-error-rate-delta",
        type=float,
        default=guard.max_error_rate_delta,
        help="rollback guard: roll back when the canary's error rate exceeds the stable one's "
        "by more than this (absolute, 0.05 = 5 points)",
    )
    serve.add_argument(
        "--canary-max-ttft-ratio",
        type=float,
        default=guard.max_ttft_ratio,
        help="rollback guard: roll back when the canary's TTFT p99 exceeds the stable one's "
        "times this",
    )
    serve.add_argument(
        "--canary-check-interval",
        type=float,
        default=guard.interval_s,
        help="rollback guard: seconds between checks",
    )
    serve.add_argument(
        "--health-probe-timeout",
        type=float,
        default=5.0,
        help="a one-token probe slower than this marks the engine (replica) unhealthy",
    )


def _add_model_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        help="NAME=TRITON_MODEL:TOKENIZER_DIR[,key=value…] of a model Triton already serves"
        " (repeatable); keys: engine (cpu_reference, tensorrt_llm, vllm, cpu_reference_vl),"
        " max_context_tokens, max_output_tokens, default_max_tokens, image_max_pixels (the"
        " pixel budget the engine's image processor is given, e.g. vLLM's mm_processor_kwargs)",
    )
    serve.add_argument(
        "--model-repository",
        type=Path,
        help="repository built by `autoglm build install`: load the best verified version of "
        "each model into Triton (explicit model control); SIGHUP re-selects",
    )
    serve.add_argument(
        "--adapters",
        type=Path,
        metavar="DIR",
        help="LoRA adapter registry (`autoglm build adapter add`), verified at start; an adapter"
        " whose sha256 does not match is refused (default: the model repository's adapters/)",
    )
    serve.add_argument(
        "--profile",
        action="append",
        default=[],
        help="pin a profile: PROFILE_ID, MODEL=PROFILE_ID or MODEL@VERSION (repeatable)",
    )
    # How versions share the GPUs (build_engine/switch_plan.py SwitchPolicy).
    policy = SwitchPolicy()
    serve.add_argument(
        "--gpu-runtime-overhead-gib",
        type=float,
        default=policy.runtime_overhead_bytes / GIB,
        help="GPU memory per GPU an engine holds beside its weights and KV cache (CUDA context,"
        " activations), in the plans of version switches and canaries; an estimate: set the"
        " figure measured on your GPUs",
    )
    serve.add_argument(
        "--reduced-kv-min-ratio",
        type=float,
        default=policy.reduced_min_ratio,
        help="accept a smaller KV cache (at least this share of the one loaded alone, 0..1) to"
        " switch versions without a gap or to run a canary beside the stable version on the"
        " same GPUs; unset: never (a switch unloads first, a canary that does not fit is"
        " refused)",
    )
    serve.add_argument(
        "--switch-drain-timeout",
        type=float,
        default=policy.drain_timeout_s,
        help="seconds a switch that must unload first waits for streams on the old version",
    )


def _add_security_flags(serve: argparse.ArgumentParser) -> None:
    """TLS, bearer tokens, OIDC, the engine link, and the dev mode without them."""
    serve.add_argument("--tls-cert", type=Path, help="the façade's server certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the façade's server key (PEM file)")
    serve.add_argument("--client-ca", type=Path, help="CA bundle that issues client certificates")
    serve.add_argument(
        "--tls-min-version",
        choices=TLS_MIN_VERSION_CHOICES,
        default="1.3",
        help="lowest TLS version the gRPC and HTTP ports accept (1.2 only when asked for)",
    )
    serve.add_argument(
        "--token-store", type=Path, help="bearer-token store (`autoglm token create --store`)"
    )
    serve.add_argument(
        "--oidc-issuer",
        help="accept JWT bearer tokens of this OpenID Connect issuer (https URL) beside the "
        "token store (default: off)",
    )
    serve.add_argument("--oidc-audience", help="the aud the issuer's tokens must carry")
    serve.add_argument(
        "--oidc-config",
        type=Path,
        help="claim mapping (TOML or .json): principal claim, rules from claims to roles/models",
    )
    serve.add_argument(
        "--oidc-ca", type=Path, help="CA bundle of the issuer's HTTPS (default: the system's)"
    )
    serve.add_argument(
        "--oidc-clock-skew",
        type=float,
        default=60.0,
        help="seconds of allowance on the tokens' exp/nbf/iat",
    )
    serve.add_argument("--triton-ca", type=Path, help="CA of Triton's server certificate")
    serve.add_argument("--triton-cert", type=Path, help="the façade's client cert for Triton")
    serve.add_argument("--triton-key", type=Path, help="the façade's client key for Triton")
    serve.add_argument(
        "--triton-secret-file",
        type=Path,
        help="file holding Triton's restricted-protocol secret (never pass it on the command line)",
    )
    serve.add_argument(
        "--insecure-dev", action="store_true", help="plaintext, no tokens, loopback only"
    )


def _add_front_door_flags(serve: argparse.ArgumentParser) -> None:
    """The other ports (metrics, OpenAI API, health), their event loop, request sizes."""
    serve.add_argument(
        "--metrics-listen",
        default="127.0.0.1:9464",
        help="Prometheus /metrics host:port ('' = off)",
    )
    serve.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="asyncio",
        help="the event loop of both front doors (uvloop: measured in docs/benchmarks.md)",
    )
    serve.add_argument(
        "--openai-listen",
        help="host:port of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models…), "
        "TLS + bearer token like gRPC (default: off)",
    )
    serve.add_argument(
        "--openai-require-client-cert",
        action="store_true",
        help="refuse OpenAI-API callers without a client certificate from --client-ca "
        "(default: verified when presented; OpenAI clients send only an API key)",
    )
    serve.add_argument(
        "--openai-max-body-bytes",
        type=int,
        default=DEFAULT_OPENAI_MAX_BODY_BYTES,
        help="largest OpenAI-API request body; larger ones get 413",
    )
    serve.add_argument(
        "--grpc-max-receive-bytes",
        type=int,
        default=DEFAULT_GRPC_MAX_RECEIVE_BYTES,
        help="largest gRPC request message; larger ones get RESOURCE_EXHAUSTED",
    )
    serve.add_argument(
        "--max-images",
        type=int,
        default=ImageLimits().max_images,
        help="images one request may carry (vision-language models)",
    )
    serve.add_argument(
        "--max-image-bytes",
        type=int,
        default=ImageLimits().max_bytes,
        help="largest image file accepted, in bytes",
    )
    serve.add_argument(
        "--health-listen",
        help="plaintext host:port serving only grpc.health.v1 (for k8s probes) (default: off)",
    )


def _add_audit_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--audit-dir", type=Path, help="hash-chained audit log folder (default: off)"
    )
    serve.add_argument(
        "--audit-text", action="store_true", help="also audit prompt/completion text (PII-masked)"
    )
    serve.add_argument(
        "--audit-required",
        action="store_true",
        help="fail closed: refuse calls (UNAVAILABLE) while audit records cannot be written",
    )
    serve.add_argument(
        "--audit-anchor",
        help="append the audit chain's head to this file (another volume) or send it to "
        "syslog[:/socket|:HOST:PORT], so truncation is detectable (`audit verify --anchor`)",
    )
    serve.add_argument(
        "--audit-anchor-interval",
        type=float,
        default=60.0,
        help="seconds between anchors of the audit chain's head",
    )


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    """Admission limits, per principal and in all, and the Redis that may share them."""
    serve.add_argument(
        "--max-in-flight", type=int, default=256, help="admitted requests, all principals"
    )
    serve.add_argument(
        "--max-streams-per-principal", type=int, default=16, help="concurrent requests each"
    )
    serve.add_argument(
        "--requests-per-minute", type=int, default=600, help="per principal (bursts up to it)"
    )
    serve.add_argument(
        "--max-tokens-per-request", type=int, default=4096, help="ceiling of max_tokens"
    )
    serve.add_argument(
        "--tokens-per-minute",
        type=int,
        default=1_000_000,
        help="per principal: prompt + max_tokens reserved at admission, settled to the tokens "
        "used at the end (bursts up to it); default: %(default)s",
    )
    serve.add_argument(
        "--limits-redis",
        help="keep per-principal limits in this Redis, shared by every worker and replica: "
        "redis://host:port/db, rediss://host:port/db?ssl_ca_certs=CA.pem, unix:///path "
        "(default: off, each process keeps its own)",
    )
    serve.add_argument(
        "--limits-redis-fallback",
        choices=("closed", "local"),
        default="closed",
        help="Redis unreachable: closed = refuse calls (UNAVAILABLE); local = admit on this "
        "process's share of each quota, 1/(workers x --limits-replicas); default: %(default)s",
    )
    serve.add_argument(
        "--limits-redis-prefix",
        default="autoglm:limits:",
        help="key prefix in Redis (one per deployment sharing a Redis); default: %(default)s",
    )
    serve.add_argument(
        "--limits-replicas",
        type=int,
        default=1,
        help="façade pods or hosts sharing the Redis books (for the local fallback's share)",
    )
    serve.add_argument(
        "--limits-lease-ttl",
        type=float,
        default=30.0,
        help="seconds after which a crashed process's concurrency slots free (live ones renew "
        "every third of it); default: %(default)s",
    )
    serve.add_argument(
        "--limits-redis-timeout",
        type=float,
        default=0.5,
        help="seconds per Redis call before it counts as unreachable; default: %(default)s",
    )
    serve.add_argument(
        "--limits-redis-password-file",
        type=Path,
        help="file holding the Redis password (never in the URL)",
    )


def _add_process_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--grace", type=float, default=10.0, help="seconds in-flight calls get on SIGTERM"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="façade processes sharing the listen port (SO_REUSEPORT); metrics on port+i",
    )


def _read_config(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise settings_sources.ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise settings_sources.ConfigError(f"--config {path}: not UTF-8 ({exc.reason})") from None


def layer_serve_settings(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]
) -> None:
    """Fill `args` with each serve setting from its first source: flag > AUTOGLM_* variable >
    --config file > default (settings_sources.py), and keep the result as TOML for
    --print-config."""
    serve = settings_sources.subcommand(parser, "serve")
    opts = settings_sources.options(serve, skip=NOT_SETTINGS)
    env, warnings = settings_sources.from_env(opts, os.environ)
    for warning in warnings:
        log.warning("%s", warning)
    if args.config is None and os.environ.get(CONFIG_ENV):
        args.config = Path(os.environ[CONFIG_ENV])
    file = {}
    if args.config is not None:
        file = settings_sources.from_toml(opts, _read_config(args.config), str(args.config))
    given = settings_sources.given_on_command_line(parser, serve, argv)
    resolved = settings_sources.resolve(opts, vars(args), given, env, file)
    for key, value in resolved.items():
        setattr(args, key, value.value)
    args.effective_config = settings_sources.render_toml(opts, resolved)
