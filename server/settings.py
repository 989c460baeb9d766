"""The one settings object of the façade, built at the edge (CLI/env) and passed down frozen."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from autoglm.build_engine.switch_plan import SwitchPolicy
from autoglm.server.engine.canary_guard import GuardSettings
from autoglm.server.engine.link import EngineLink
from autoglm.server.engine.replicas import TargetError, parse_target, unix_socket_path
from autoglm.server.models import ModelSpec
from autoglm.server.security.claims import load_mapping
from autoglm.server.security.limits import LimitSettings
from autoglm.server.security.shared_limits import SharedLimitSettings
from autoglm.server.telemetry.span_export import DEFAULT_SPAN_EXPORT, check_span_export
from autoglm.server.vision import MAX_IMAGE_BYTES_SETTING, ImageLimits


class SettingsError(ValueError):
    """Settings that cannot work; the message names the setting."""


def autoglm_home() -> Path:
    """Where models, dev PKI, tokens and run state live (AUTOGLM_HOME, else ~/.cache/autoglm)."""
    return Path(os.environ.get("AUTOGLM_HOME", Path.home() / ".cache" / "autoglm"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host_port(address: str, setting: str = "listen") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise SettingsError(f"{setting}: {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _check_socket_dir(socket: Path) -> None:
    """A unix-socket link is locked by its directory: it must exist and be closed to "others"
    (group access is allowed, for a Triton sidecar that shares a group with the façade)."""
    try:
        mode = socket.parent.stat().st_mode
    except OSError as exc:
        raise SettingsError(
            f"triton_target: the socket's directory {socket.parent}: {exc.strerror}"
        ) from None
    if mode & 0o007:
        raise SettingsError(
            f"triton_target: the socket's directory {socket.parent} is open to other users"
            f" (mode {mode & 0o777:03o}); chmod o-rwx it so that only the service can reach Triton"
        )


DEFAULT_OPENAI_MAX_BODY_BYTES = 32 << 20
# gRPC's own default (4 MiB) is below one request with a few screenshots: 10 images of ~1 MB,
# the model authors' per-prompt limit, fit with room to spare.
DEFAULT_GRPC_MAX_RECEIVE_BYTES = 32 << 20
EVENT_LOOPS = ("asyncio", "uvloop")
TLS_MIN_VERSION_CHOICES = ("1.3", "1.2")


# SwitchPolicy's fields by the settings (serve flags) that set them (cli_serve.py).
_SWITCH_POLICY_SETTINGS = {
    "reduced_min_ratio": "reduced_kv_min_ratio",
    "runtime_overhead_bytes": "gpu_runtime_overhead_gib",
    "drain_timeout_s": "switch_drain_timeout",
}


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert: Path
    key: Path
    client_ca: Path | None  # None = no client certificates (TLS only); refused unless allowed
    require_client_cert: bool = True
    # The lowest TLS version every TLS listener accepts (gRPC and HTTP): "1.3", or "1.2" only when
    # asked for (`--tls-min-version`; security/tls.py says how gRPC enforces it).
    min_version: str = "1.3"


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """JWT bearer tokens of an OpenID Connect provider, beside the local tokens (security/oidc.py).
    The claim mapping (`config`, claims.py) turns their claims into a principal, roles, models."""

    issuer: str  # https URL; its discovery document is <issuer>/.well-known/openid-configuration
    audience: str  # the `aud` the tokens must carry: this service's name at the provider
    config: Path  # the claim mapping (TOML, or JSON by its .json suffix)
    ca_file: Path | None = None  # CA bundle for the provider's HTTPS (None = the system's)
    clock_skew_s: float = 60.0  # allowance on exp/nbf/iat for clocks that differ
    # A token with a kid not in the cached JWKS refetches it at most this often.
    refetch_interval_s: float = 30.0

    def validate(self) -> None:
        if not self.issuer.startswith("https://"):
            raise SettingsError(f"oidc_issuer: must be an https:// URL, got {self.issuer!r}")
        if not self.audience:
            raise SettingsError("oidc_audience: required with oidc_issuer")
        if not 0 <= self.clock_skew_s <= 300:
            raise SettingsError(f"oidc_clock_skew: must be in [0, 300], got {self.clock_skew_s}")
        if not self.refetch_interval_s > 0:
            raise SettingsError(
                f"oidc_refetch_interval_s: must be > 0, got {self.refetch_interval_s}"
            )
        for name, path in (("oidc_config", self.config), ("oidc_ca", self.ca_file)):
            if path is not None and not path.is_file():
                raise SettingsError(f"{name}: {path} does not exist")
        try:
            load_mapping(self.config)
        except ValueError as exc:
            raise SettingsError(f"oidc_config: {exc}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str  # host:port; port 0 picks a free one (the bound port is returned by start)
    triton_target: str  # host:port of Triton's gRPC endpoint, replicas, or unix:/path
    models: tuple[ModelSpec, ...]  # models given explicitly (an existing Triton's models)
    tls: TlsSettings | None = None
    # How the façade reaches Triton: mTLS + restricted-protocol secret; None = plaintext.
    engine_link: EngineLink | None = None
    token_store: Path | None = None
    # JWT bearer tokens of an identity provider, accepted beside the token store; None = off.
    oidc: OidcSettings | None = None
    # Plaintext without tokens: only on loopback, only when asked for by name.
    insecure_dev: bool = False
    # Prometheus metrics on their own HTTP port ("host:0" = any free port); None = off.
    metrics_listen: str | None = "127.0.0.1:9464"
    # A plaintext port serving only grpc.health.v1 (Kubernetes gRPC probes cannot present a
    # client certificate); None = off. Health reveals no data and takes no input but a name.
    health_listen: str | None = None
    limits: LimitSettings = field(default_factory=LimitSettings)
    # Per-principal limits kept in Redis for every process and pod (security/shared_limits.py);
    # None = each process keeps its own books (limits.py).
    shared_limits: SharedLimitSettings | None = None
    # Hash-chained audit log (audit.jsonl in this folder); text only with audit_text (PII-masked).
    audit_dir: Path | None = None
    audit_text: bool = False
    # Fail closed: refuse calls (UNAVAILABLE) while audit records cannot be written.
    audit_required: bool = False
    # Where the chain's head is anchored every audit_anchor_interval_s (and at shutdown): a file
    # on another volume, or "syslog[:/socket|:host:port]" (audit/anchor.py); None = not anchored.
    audit_anchor: str | None = None
    audit_anchor_interval_s: float = 60.0
    # A model repository built by `autoglm build install`: at start-up (and on SIGHUP) the best
    # compatible version of each model is verified (sha256) and loaded into Triton.
    model_repository: Path | None = None
    # The LoRA adapter registry (`autoglm build adapter add`; server/adapters.py); None = the
    # model repository's adapters/ folder, or no adapters without a repository.
    adapters_dir: Path | None = None
    profile_overrides: tuple[str, ...] = ()  # PROFILE_ID, MODEL=PROFILE_ID or MODEL@VERSION
    grace_period_s: float = 10.0
    # Façade processes sharing the listen port (SO_REUSEPORT, workers.py); 1 = this process.
    workers: int = 1
    # Deep health (health.py): every interval, each Triton endpoint must have generated a token
    # (real traffic or a one-token probe) within the probe timeout, else it is ejected.
    health_interval_s: float = 2.0
    health_probe_timeout_s: float = 5.0
    # The canary rollback guard's window, margins and period (engine/canary_guard.py).
    canary_guard: GuardSettings = field(default_factory=GuardSettings)
    # How versions and canaries share the GPUs (build_engine/switch_plan.py).
    switch_policy: SwitchPolicy = field(default_factory=SwitchPolicy)
    # TLS name to check Triton's certificate against when the target lists addresses (replicas);
    # None = the target's host name.
    triton_tls_name: str | None = None
    # Which span processor exports the façade's spans (telemetry/span_export.py): "child" =
    # the export child process, "batch" = the SDK's BatchSpanProcessor in this process.
    span_export: str = DEFAULT_SPAN_EXPORT
    # The OpenAI-compatible HTTP API (api/openai/) on its own host:port; None = off. Same TLS
    # certificate and token store as gRPC; client certificates are verified when presented and
    # required only with openai_require_client_cert (OpenAI clients send an API key only).
    openai_listen: str | None = None
    openai_require_client_cert: bool = False
    # Request bodies above this are refused with 413 before parsing (a phone screenshot as a
    # data: URL is ~1.2 MB; several per request in long agent sessions).
    openai_max_body_bytes: int = DEFAULT_OPENAI_MAX_BODY_BYTES
    # The event loop both front doors run on: "asyncio" or "uvloop" (app.run_event_loop).
    event_loop: str = "asyncio"
    # Largest gRPC request message; larger ones get RESOURCE_EXHAUSTED from gRPC itself.
    grpc_max_receive_bytes: int = DEFAULT_GRPC_MAX_RECEIVE_BYTES
    # Images per request and bytes per image, for every vision-language model (vision.py).
    image_limits: ImageLimits = field(default_factory=ImageLimits)

    def _validate_audit(self) -> None:
        # Asking for a fail-closed or anchored audit without a log must not pass unnoticed.
        for name, on in (
            ("audit_required", self.audit_required),
            ("audit_anchor", self.audit_anchor),
        ):
            if on and self.audit_dir is None:
                raise SettingsError(f"{name}: needs audit_dir (--audit-dir)")
        if not self.audit_anchor_interval_s > 0:
            raise SettingsError(
                f"audit_anchor_interval_s: must be > 0, got {self.audit_anchor_interval_s}"
            )

    def validate(self) -> None:
        host, _ = split_host_port(self.listen)
        try:
            self.canary_guard.validate()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        try:
            self.switch_policy.validate()
        except ValueError as exc:  # named as the serve flag / setting that set it
            field_name, _, rest = str(exc).partition(":")
            name = _SWITCH_POLICY_SETTINGS.get(field_name, field_name)
            raise SettingsError(f"{name}:{rest}") from None
        self._validate_images()
        self._validate_openai()
        self._validate_audit()
        if self.oidc is not None:
            if self.insecure_dev:
                raise SettingsError("oidc_issuer: insecure dev mode checks no tokens")
            self.oidc.validate()
        try:
            parse_target(self.triton_target)
            socket_path = unix_socket_path(self.triton_target)
        except TargetError as exc:
            raise SettingsError(str(exc)) from None
        if socket_path is not None:
            _check_socket_dir(Path(socket_path))
        elif self.engine_link is not None and self.engine_link.tls is None:
            raise SettingsError(
                "engine_link: a link without TLS needs a unix: triton_target"
                " (over TCP its secret would travel in the clear)"
            )
        for name, value in (
            ("health_interval_s", self.health_interval_s),
            ("health_probe_timeout_s", self.health_probe_timeout_s),
        ):
            if not value > 0:
                raise SettingsError(f"{name}: must be > 0, got {value}")
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"event_loop: must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )
        if not self.models and self.model_repository is None:
            raise SettingsError("models: give --model or --model-repository")
        try:
            check_span_export(self.span_export)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.shared_limits is not None:
            try:
                self.shared_limits.validate()
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        if self.workers < 1:
            raise SettingsError(f"workers: must be >= 1, got {self.workers}")
        if self.workers > 1 and self.model_repository is not None:
            # Every worker would load (and SIGHUP re-select) the models into Triton again.
            raise SettingsError("workers: > 1 needs --model, not --model-repository")
        if self.insecure_dev:
            if not is_loopback(host):
                raise SettingsError(
                    "insecure_dev: plaintext without tokens is only allowed on loopback,"
                    f" not {host!r}"
                )
            return
        if self.tls is None:
            raise SettingsError(
                "tls: a server certificate and key are required (or --insecure-dev on loopback)"
            )
        if self.tls.require_client_cert and self.tls.client_ca is None:
            raise SettingsError("tls.client_ca: required to verify client certificates")
        if self.tls.min_version not in TLS_MIN_VERSION_CHOICES:
            raise SettingsError(
                f"tls.min_version: {self.tls.min_version!r} is not one of "
                f"{', '.join(TLS_MIN_VERSION_CHOICES)}"
            )
        if self.token_store is None:
            raise SettingsError("token_store: required (tokens authorize every call)")
        for name, path in (
            ("tls.cert", self.tls.cert),
            ("tls.key", self.tls.key),
            ("tls.client_ca", self.tls.client_ca),
        ):
            if path is not None and not path.is_file():
                raise SettingsError(f"{name}: {path} does not exist")

    def _validate_images(self) -> None:
        if self.grpc_max_receive_bytes < 1024:
            raise SettingsError(
                f"grpc_max_receive_bytes: must be >= 1024, got {self.grpc_max_receive_bytes}"
            )
        limits = self.image_limits
        if not 0 <= limits.max_images <= 100:
            raise SettingsError(f"max_images: must be in [0, 100], got {limits.max_images}")
        if not 1 <= limits.max_bytes <= MAX_IMAGE_BYTES_SETTING:
            raise SettingsError(
                f"max_image_bytes: must be in [1, {MAX_IMAGE_BYTES_SETTING}],"
                f" got {limits.max_bytes}"
            )

    def _validate_openai(self) -> None:
        if self.openai_max_body_bytes < 1024:
            raise SettingsError(
                f"openai_max_body_bytes: must be >= 1024, got {self.openai_max_body_bytes}"
            )
        if self.openai_listen is None:
            if self.openai_require_client_cert:
                raise SettingsError("openai_require_client_cert: needs openai_listen")
            return
        host, _ = split_host_port(self.openai_listen, "openai_listen")
        if self.insecure_dev:
            if not is_loopback(host):
                raise SettingsError(
                    "openai_listen: plaintext without tokens is only allowed on loopback,"
                    f" not {host!r}"
                )
            if self.openai_require_client_cert:
                raise SettingsError("openai_require_client_cert: insecure dev mode has no TLS")
            return
        if self.openai_require_client_cert and (self.tls is None or self.tls.client_ca is None):
            raise SettingsError(
                "openai_require_client_cert: needs tls.client_ca to verify client certificates"
            )
