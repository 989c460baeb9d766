"""Assemble and run the façade: gRPC server, the OpenAI-compatible HTTP API beside it, auth,
health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from autoglm.build_engine import manifest as mf
from autoglm.build_engine.adapters import ADAPTERS_DIR
from autoglm.build_engine.version_plan import parse_override
from autoglm.server.adapters import (
    AdapterSet,
    ServedAdapter,
    engine_refusal,
    load_adapters,
    unservable,
)
from autoglm.server.api.calls import Generations
from autoglm.server.api.openai.http_server import RunningHttp, start_http
from autoglm.server.api.openai.routes import FrontDoor
from autoglm.server.api.request_decoding import DecodeInterceptor
from autoglm.server.api.service import TextGenerationService
from autoglm.server.audit.anchor import start_anchoring
from autoglm.server.audit.canary import audit_canaries, decision_record
from autoglm.server.audit.interceptor import AuditInterceptor
from autoglm.server.audit.sink import AuditSink
from autoglm.server.audit.writer import AuditWriter
from autoglm.server.engine.canary_guard import VersionWindow, run_guard
from autoglm.server.engine.client import EngineClient
from autoglm.server.engine.contract_check import (
    ContractMismatch,
    refuse_adapters_without_lora,
    verify_contracts,
)
from autoglm.server.engine.health import EngineHealth
from autoglm.server.engine.model_versions import LoadedVersion, ModelVersions
from autoglm.server.model_limits import EngineLimits
from autoglm.server.models import ModelRegistry, ModelSpec, ServedModel, load_model
from autoglm.server.security.auth import AuthInterceptor
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.claims import load_mapping
from autoglm.server.security.credentials import Credentials
from autoglm.server.security.limits import Admission, AdmissionControl
from autoglm.server.security.oidc import HttpsJwks, OidcConfig, OidcVerifier
from autoglm.server.security.shared_limits import SharedAdmission
from autoglm.server.security.tls import (
    TlsVersionInterceptor,
    accepts_tls12_handshake,
    probe_host,
    reloading_server_credentials,
)
from autoglm.server.settings import Settings, split_host_port
from autoglm.server.telemetry import tracing
from autoglm.server.telemetry.metrics import FacadeMetrics, MetricsServer
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

log = logging.getLogger("autoglm.server")

T = TypeVar("T")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextGeneration"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    engine: EngineClient
    health: health.aio.HealthServicer
    registry: ModelRegistry
    generations: Generations
    service: TextGenerationService  # the gRPC front door
    metrics: FacadeMetrics
    metrics_server: MetricsServer | None
    _watch: asyncio.Task[None]
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    versions: ModelVersions | None = None
    http: RunningHttp | None = None
    draining: asyncio.Event | None = None
    anchor: asyncio.Task[None] | None = None
    canary_guard: asyncio.Task[None] | None = None  # engine/canary_guard.py (repository only)

    @property
    def openai_port(self) -> int | None:
        return self.http.port if self.http else None

    async def reload_versions(self) -> None:
        """Re-select and load the best version of each model (SIGHUP); refusals keep the old."""
        if self.versions is None:
            return
        before = {name: lv.version for name, lv in self.versions.loaded.items()}
        routes = self.versions.routes()
        try:
            loaded = await self.versions.select_and_load()
        except Exception:
            log.exception("model reload failed; the loaded versions keep serving")
            return
        for name, lv in sorted(loaded.items()):
            log.info("model %s: serving version %d (profile %s)", name, lv.version, lv.profile_id)
            if before.get(name) != lv.version:
                await self._serve_version(lv)
                self.generations.audit.model_switch(name, lv.version, before.get(name))
        audit_canaries(self.generations.audit, routes, self.versions.routes())
        _log_unservable_adapters(self.registry, self.versions)

    async def _serve_version(self, lv: LoadedVersion) -> None:
        """Serve a switched-to version with its own tokenizer and built limits: the requests
        that start from now on are prepared for it (calls in flight keep theirs)."""
        old = self.registry.get(lv.model)
        spec = _spec_of(lv)
        if old is not None:
            spec = dataclasses.replace(spec, image_limits=old.spec.image_limits)
        try:
            model = await asyncio.to_thread(load_model, spec)
        except (OSError, ValueError) as exc:
            log.error("model %s version %d: %s; requests are prepared as before", lv.model,
                      lv.version, exc)  # fmt: skip
            return
        if old is not None and model.spec.engine != old.spec.engine:
            log.warning("model %s: engine %s -> %s with version %d", lv.model, old.spec.engine,
                        model.spec.engine, lv.version)  # fmt: skip
        self.registry.replace(model)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server else None

    async def stop(self, grace: float | None) -> None:
        """Health flips to NOT_SERVING first, then in-flight calls get `grace` seconds."""
        if self.draining is not None:
            self.draining.set()  # /readyz answers 503 from now on
        await self.health.enter_graceful_shutdown()
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        # Both front doors drain at once, within the same grace.
        stops = [self.server.stop(grace)]
        if self.http is not None:
            stops.append(self.http.stop(grace))
        await asyncio.gather(*stops)
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.engine.close()
        self.generations.close()  # drains the audit writer
        await self.generations.admission.close()  # the shared books' pending releases
        if self.canary_guard is not None:
            self.canary_guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.canary_guard
        if self.anchor is not None:
            self.anchor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.anchor
        if self.metrics_server is not None:
            self.metrics_server.stop()


async def _load_repository(
    settings: Settings, engine: EngineClient
) -> tuple[ModelVersions | None, list[ModelSpec]]:
    """Verify and load the best version of each model of the repository (VersionRefused if none)."""
    if settings.model_repository is None:
        return None, []
    hardware = await asyncio.to_thread(mf.detect_hardware)
    versions = ModelVersions(
        settings.model_repository,
        engine,
        hardware=hardware,
        overrides=[parse_override(o) for o in settings.profile_overrides],
        switch_policy=settings.switch_policy,
    )
    loaded = await versions.select_and_load()
    specs = []
    for name, lv in sorted(loaded.items()):
        log.info("model %s: version %d (profile %s)", name, lv.version, lv.profile_id)
        specs.append(dataclasses.replace(_spec_of(lv), image_limits=settings.image_limits))
    return versions, specs


def _spec_of(lv: LoadedVersion) -> ModelSpec:
    """How the façade serves a loaded version: its tokenizer, the engine kind its manifest names
    (what the façade must speak) and what the engine was built for, which bounds the prompt and
    the context (model_limits.py)."""
    profile = lv.manifest.profile
    built = EngineLimits(
        profile.max_input_len, profile.max_seq_len, f"version {lv.version} manifest"
    )
    return ModelSpec(
        name=lv.model,
        triton_model=lv.model,
        tokenizer_dir=lv.path,
        engine=profile.engine_kind,
        engine_limits=built,
    )


def _adapters(settings: Settings, models: list[ServedModel]) -> AdapterSet:
    """The verified LoRA adapters of served token-id models; every other one is logged as
    refused and not served (server/adapters.py)."""
    root = settings.adapters_dir
    if root is None and settings.model_repository is not None:
        root = settings.model_repository / ADAPTERS_DIR
    if root is None:
        return AdapterSet()
    served, refused = load_adapters(root)
    bases = {m.spec.name for m in models if not m.returns_text}
    for adapter in [a for a in served if a.base not in bases]:
        why = f"base {adapter.base!r} is not served here on a token-id engine"
        refused.append(f"adapter {adapter.name}: refused, not served: {why}")
        served.remove(adapter)
    for reason in refused:
        log.error("%s", reason)
    for adapter in served:
        log.info("adapter %s of %s: task %d", adapter.name, adapter.base, adapter.task_id)
    return AdapterSet(served)


def _log_unservable_adapters(registry: ModelRegistry, versions: ModelVersions) -> None:
    def served(base: str) -> tuple[int, mf.Profile] | None:
        lv = versions.loaded.get(base)
        return None if lv is None else (lv.version, lv.manifest.profile)

    for why in unservable(registry.adapters, served):
        log.error(
            "%s: its requests are refused (FAILED_PRECONDITION) while this version serves", why
        )


def _adapter_refusal(versions: ModelVersions) -> Callable[[ServedAdapter, str, int], str | None]:
    """Why the served `version` of a model cannot apply an adapter (its manifest's profile:
    adapters.engine_refusal), or None."""

    def refusal(adapter: ServedAdapter, model: str, version: int) -> str | None:
        profile = versions.profile(model, version)
        return None if profile is None else engine_refusal(adapter, version, profile)

    return refusal


async def start_server(settings: Settings) -> RunningServer:
    """Start the façade; returns once it listens (the bound port is in the result)."""
    settings.validate()
    link = settings.engine_link
    engine = EngineClient(
        settings.triton_target,
        credentials=link.channel_credentials() if link else None,
        metadata=link.metadata() if link else (),
        tls_name=settings.triton_tls_name,
        ssl_context=link.ssl_context() if link else None,
    )
    versions, specs = await _load_repository(settings, engine)
    models = [
        load_model(dataclasses.replace(spec, image_limits=settings.image_limits))
        for spec in settings.models
    ] + [load_model(spec) for spec in specs]
    registry = ModelRegistry(models, await asyncio.to_thread(_adapters, settings, models))
    if versions is not None:
        _log_unservable_adapters(registry, versions)
    # Each served model must declare the tensors of the contract the façade will speak to it.
    try:
        await verify_contracts(engine, registry)
        await refuse_adapters_without_lora(engine, registry)
    except ContractMismatch:
        await engine.close()
        raise
    metrics = FacadeMetrics(registry.names())
    audit = _audit_sink(settings, metrics)
    # First: the OTel server span, so that refused calls are traced too ([] when tracing is off).
    # Then the audit record of every call, refused ones included (outside auth).
    interceptors: list[grpc.aio.ServerInterceptor] = [*tracing.server_interceptors()]
    if audit.enabled:
        interceptors.append(AuditInterceptor(audit))
    # Local tokens, and the identity provider's JWTs when one is configured; None in dev mode.
    credentials = None if settings.insecure_dev else await _credentials(settings)
    if settings.insecure_dev:
        log.warning(
            "INSECURE DEV MODE: plaintext gRPC without tokens on %s (loopback only). "
            "Never use this outside a developer machine.",
            settings.listen,
        )
    else:
        assert settings.token_store is not None  # checked by settings.validate()
        assert settings.tls is not None
        # Before the token check: a call over an older TLS than --tls-min-version is refused
        # whatever its token (the handshake refuses it already when grpc allows: tls.py).
        interceptors.append(TlsVersionInterceptor(settings.tls.min_version))
        interceptors.append(AuthInterceptor(credentials, on_failure=metrics.auth_failure))
    # Innermost: decode requests inside the handler (malformed bytes → INVALID_ARGUMENT).
    interceptors.append(DecodeInterceptor((SERVICE_NAME,)))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_receive_bytes),
            # Several worker processes share the port (workers.py); a lone façade refuses to,
            # so a second one started by mistake fails to bind instead of splitting the traffic.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ],
    )
    window = VersionWindow(settings.canary_guard.window_s)

    def observe_version(
        model: str, version: int, code: grpc.StatusCode, ttft: float | None
    ) -> None:
        window.observe(model, version, code, ttft)  # the rollback guard's evidence
        metrics.version_outcome(model, version, code, ttft)

    generations = Generations(
        registry,
        engine,
        metrics=metrics,
        admission=_admission(settings, metrics),
        audit=audit,
        routes=versions.route if versions is not None else None,
        observe=observe_version,
        adapter_refusal=_adapter_refusal(versions) if versions is not None else None,
    )
    if versions is not None:
        for name, lv in sorted(versions.loaded.items()):
            audit.model_switch(name, lv.version, None)
        audit_canaries(audit, {}, versions.routes())
    service = TextGenerationService(generations)
    pb_grpc.add_TextGenerationServicer_to_server(service, server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if settings.insecure_dev:
        port = server.add_insecure_port(settings.listen)
    else:
        tls = settings.tls
        assert tls is not None
        # Re-read at every handshake when the files change: rotation without restart.
        creds, _files = reloading_server_credentials(
            tls.cert, tls.key, tls.client_ca, require_client_auth=tls.require_client_cert
        )
        port = server.add_secure_port(settings.listen, creds)
    await hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await hs.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    metrics_server = None
    if settings.metrics_listen:
        host, mport = split_host_port(settings.metrics_listen)
        metrics_server, mport = metrics.start_http_server(host, mport)
        log.info("metrics on http://%s:%d/metrics", host, mport)
    health_server = health_port = None
    if settings.health_listen:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(hs, health_server)
        health_port = health_server.add_insecure_port(settings.health_listen)
        await health_server.start()
        log.info("plaintext health-only port %d", health_port)
    await server.start()
    if settings.tls is not None and not settings.insecure_dev:
        await _report_grpc_tls12(settings.listen, port, settings.tls.min_version)
    deep_health = EngineHealth(
        engine,
        registry,
        hs,
        metrics,
        services=("", SERVICE_NAME),
        interval_s=settings.health_interval_s,
        probe_timeout_s=settings.health_probe_timeout_s,
    )
    watch = asyncio.create_task(deep_health.run())
    draining = asyncio.Event()
    http = None
    if settings.openai_listen is not None:
        door = FrontDoor(
            generations=generations,
            tokens=credentials,
            audit=generations.audit,
            max_body_bytes=settings.openai_max_body_bytes,
            # Ready as gRPC health says SERVING: the engine passed its deep check, and the
            # façade is not draining (stop() flips it first).
            ready=lambda: deep_health.ready is True and not draining.is_set(),
            on_auth_failure=metrics.auth_failure,
        )
        http = await start_http(
            door,
            settings.openai_listen,
            tls=None if settings.insecure_dev else settings.tls,
            require_client_cert=settings.openai_require_client_cert,
            reuse_port=settings.workers > 1,
        )
    log.info("façade listening on port %d (models: %s)", port, ", ".join(registry.names()))
    guard = None
    if versions is not None:

        def rolled_back(model: str, version: int, reason: str) -> None:
            generations.audit.submit(decision_record("model.rollback", model, version, reason))

        guard = asyncio.create_task(
            run_guard(
                versions.routes,
                window,
                settings.canary_guard,
                versions.rollback,
                rolled_back,
                follow=versions.follow_records,
            )
        )
    return RunningServer(
        server,
        port,
        engine,
        hs,
        registry,
        generations,
        service,
        metrics,
        metrics_server,
        watch,
        health_server,
        health_port,
        versions,
        http,
        draining,
        start_anchoring(
            settings.audit_anchor,
            settings.audit_anchor_interval_s,
            generations.audit,
            on_failure=metrics.audit_anchor_failed,
        ),
        guard,
    )


async def _credentials(settings: Settings) -> Credentials:
    assert settings.token_store is not None  # checked by settings.validate()
    verifier = None
    if settings.oidc is not None:
        oidc = settings.oidc
        config = OidcConfig(
            issuer=oidc.issuer,
            audience=oidc.audience,
            mapping=load_mapping(oidc.config),
            clock_skew_s=oidc.clock_skew_s,
            refetch_interval_s=oidc.refetch_interval_s,
        )
        verifier = OidcVerifier(config, HttpsJwks(oidc.issuer, ca_file=oidc.ca_file))
        await verifier.start()  # the first JWKS; a provider down is logged and retried
        log.info("JWT bearer tokens of %s accepted (audience %s)", oidc.issuer, oidc.audience)
    return Credentials(TokenStore(settings.token_store), verifier)


def _audit_sink(settings: Settings, metrics: FacadeMetrics) -> AuditSink:
    writer = None
    if settings.audit_dir is not None:
        writer = AuditWriter(settings.audit_dir / "audit.jsonl", record_text=settings.audit_text)
    return AuditSink(
        writer, required=settings.audit_required, on_failure=metrics.audit_write_failed
    )


async def _report_grpc_tls12(listen: str, port: int, min_version: str) -> None:
    """Say at start whether the gRPC port refuses TLS 1.2 at the handshake (a real 1.2-only
    ClientHello to it) or only per call (security/tls.py explains when each holds)."""
    if min_version == "1.2" or listen.startswith("unix:"):
        return
    host = probe_host(split_host_port(listen)[0])
    try:
        accepted = await asyncio.to_thread(accepts_tls12_handshake, host, port)
    except OSError as exc:
        log.warning("could not probe the gRPC port's TLS 1.2 handshake (%s)", exc)
        return
    if accepted:
        log.warning(
            "gRPC port %d completes TLS 1.2 handshakes (grpc was loaded without the TLS 1.3 "
            "cipher setting; start through `autoglm serve`); calls over TLS 1.2 are still "
            "refused, each with UNAUTHENTICATED",
            port,
        )
    else:
        log.info("gRPC port %d refuses TLS 1.2 handshakes", port)


def _admission(settings: Settings, metrics: FacadeMetrics) -> AdmissionControl:
    """The per-principal books: in Redis when settings name one (shared by every worker and
    pod: security/shared_limits.py), else this process's own (security/limits.py)."""
    shared = settings.shared_limits
    if shared is None:
        metrics.set_limits_backend("local")
        return Admission(settings.limits)
    # The local fallback's divisor: every process of every replica holds an equal share.
    share = settings.workers * shared.replicas
    log.info(
        "per-principal limits in Redis (%s, prefix %s); if it is unreachable: %s",
        shared.redis_url,
        shared.key_prefix,
        "fail closed" if shared.fallback == "closed" else f"the local share (1/{share})",
    )
    return SharedAdmission(
        settings.limits,
        shared,
        share=share,
        on_backend=metrics.set_limits_backend,
        on_store_error=metrics.limits_store_error,
    )


def run_event_loop(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """Run `main` on a new event loop of the kind settings name ("asyncio" or "uvloop")."""
    factory = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def serve_until_signal(running: RunningServer, grace: float) -> None:
    """Block until SIGTERM/SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.create_task(running.reload_versions())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
        log.info("shutting down: health NOT_SERVING, %.0f s grace for in-flight calls", grace)
    finally:
        await running.stop(grace)
