"""Prometheus metrics of the façade, on their own registry and their own HTTP port.

Triton exports the engine side on :8002/metrics (`nv_inference_*`, `nv_trt_llm_*` on GPU); these
are the caller's view: per-model request outcomes, time to first token, inter-token latency,
token counts, concurrency. docs/observability.md lists both side by side.

Hot-path cost: label children are bound once per served model, so a request does no label
lookups apart from one cached dict lookup for its final status code. Model names outside the
served set (a caller asking for a model that does not exist) are folded into `_unknown` so that
callers cannot blow up the label cardinality.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client import start_http_server as _prom_start_http_server

UNKNOWN_MODEL = "_unknown"

# Buckets modelled on vLLM's `vllm:time_to_first_token_seconds` / `vllm:inter_token_latency_seconds`
# (vllm/v1/metrics/loggers.py): LLM TTFT spans milliseconds (short prompt, warm engine) to tens of
# seconds (long prompt under load), so 5 ms … 30 s with dense steps below 1 s where SLOs sit.
TTFT_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0,
)  # fmt: skip
# One decode step: ~1–10 ms on a GPU, ~50 ms per token on the CPU reference engine (facts.md:
# ~19 tokens/s), seconds when the batch is saturated.
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
# End to end: a CountTokens call takes milliseconds, a long generation minutes.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
# Powers of two up to 32k tokens of context.
TOKEN_BUCKETS = (
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768,
)  # fmt: skip


def _code_name(code: Enum | str) -> str:
    # grpc.StatusCode members have `.name` ("OK", "INVALID_ARGUMENT"); strings pass through.
    return code.name if isinstance(code, Enum) else str(code)


def _observe_many(hist: Histogram, value: float, n: int) -> None:
    """`n` observations of the same `value` at the cost of one (a coalesced message carries
    many tokens that share one gap).

    Mirrors `Histogram.observe` of prometheus_client 0.26 (sum += value, the first bucket whose
    upper bound holds the value += 1), with n instead of 1; falls back to n observe() calls if
    those internals ever change.
    """
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if n == 1 or bounds is None or buckets is None or total is None:
        for _ in range(n):
            hist.observe(value)
        return
    total.inc(value * n)
    buckets[bisect_left(bounds, value)].inc(n)  # bounds end with +Inf: always found


@dataclass(frozen=True, slots=True)
class _ModelChildren:
    """Label children of one model, bound once (prometheus_client's `labels()` takes a lock)."""

    ttft: Histogram
    itl: Histogram
    prompt_tokens: Histogram
    completion_tokens: Histogram
    generated_tokens: Counter
    in_flight: Gauge


class RequestObserver:
    """Timings and outcome of one request; create with `FacadeMetrics.request(model, rpc)`.

    Call `first_token()` (optional: `tokens()` implies it), `tokens(n)` per engine response
    and `finish(code, …)` exactly once (later calls are ignored, so a `finally` is safe).
    """

    __slots__ = (
        "_api", "_c", "_finished", "_last", "_metrics", "_model", "_rpc", "_start", "ttft_s",
    )  # fmt: skip

    def __init__(
        self, metrics: FacadeMetrics, children: _ModelChildren, model: str, api: str, rpc: str
    ) -> None:
        self._metrics = metrics
        self._c = children
        self._model = model
        self._api = api
        self._rpc = rpc
        self._start = time.perf_counter()
        self._last: float | None = None  # time of the latest token; None until the first
        self._finished = False
        self.ttft_s: float | None = None
        children.in_flight.inc()

    def first_token(self, at: float | None = None) -> None:
        """The first token arrived (`at`: its time.perf_counter arrival time, default now)."""
        if self._last is not None:
            return
        now = time.perf_counter() if at is None else at
        self._last = now
        self.ttft_s = now - self._start
        self._c.ttft.observe(self.ttft_s)

    def tokens(self, n: int = 1, *, first_at: float | None = None, at: float | None = None) -> None:
        """`n` new tokens, the first arriving at `first_at` and the last at `at` (perf_counter
        seconds; default now) — one engine response, or one coalesced message, may carry several.

        The first token of the request is its TTFT, not a gap (vLLM excludes it too); the other
        tokens share the time since the previous last token evenly.
        """
        if n <= 0:
            return
        self._c.generated_tokens.inc(n)
        now = time.perf_counter() if at is None else at
        if self._last is None:
            self.first_token(now if first_at is None else first_at)
            n -= 1
            if n == 0:
                return
        assert self._last is not None
        gap = (now - self._last) / n
        self._last = now
        _observe_many(self._c.itl, gap, n)

    def finish(
        self, code: Enum | str = "OK", prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        if self._finished:
            return
        self._finished = True
        self._c.in_flight.dec()
        name = _code_name(code)
        self._metrics._requests_child(self._model, self._api, self._rpc, name).inc()
        self._metrics._duration_child(self._model, self._api, self._rpc).observe(
            time.perf_counter() - self._start
        )
        if prompt_tokens > 0:
            self._c.prompt_tokens.observe(prompt_tokens)
        if completion_tokens > 0 or name == "OK":
            self._c.completion_tokens.observe(completion_tokens)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """The `/metrics` HTTP server thread; `stop()` closes the socket and joins the thread."""

    httpd: WSGIServer
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class FacadeMetrics:
    """All façade metrics on one private `CollectorRegistry` (no global state: tests and
    several façades in one process do not collide)."""

    def __init__(self, models: Iterable[str] = (), *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_metrics:
            # process_resident_memory_bytes, process_cpu_seconds_total, python_info.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.requests = Counter(
            "autoglm_requests",
            "Finished calls by gRPC status code (HTTP calls by the code their status maps from).",
            ["model", "api", "rpc", "code"], registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "autoglm_time_to_first_token_seconds",
            "Time from request start to the first generated token.",
            ["model"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "autoglm_inter_token_latency_seconds",
            "Gap between consecutive generated tokens (first token excluded).",
            ["model"], buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "autoglm_request_duration_seconds", "End-to-end call duration in the façade.",
            ["model", "api", "rpc"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Histogram(
            "autoglm_prompt_tokens", "Prompt length in tokens per request.",
            ["model"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.completion_tokens = Histogram(
            "autoglm_completion_tokens", "Generated tokens per finished request.",
            ["model"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        # Counted as tokens stream in, so tokens/s stays live during long generations (the
        # completion histogram only moves when a request finishes).
        self.generated_tokens = Counter(
            "autoglm_generated_tokens", "Tokens streamed back to callers.",
            ["model"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "autoglm_in_flight_requests", "RPCs currently being served.", ["model"], registry=r
        )
        self.auth_failures = Counter(
            "autoglm_auth_failures", "Refused calls by reason (bounded set of reasons).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.audit_write_failures = Counter(
            "autoglm_audit_write_failures", "Audit records that could not be written (lost).",
            registry=r,
        )  # fmt: skip
        self.audit_anchor_failures = Counter(
            "autoglm_audit_anchor_failures", "Audit chain heads that could not be anchored.",
            registry=r,
        )  # fmt: skip
        self.limit_rejections = Counter(
            "autoglm_limit_rejections", "Requests refused by a limit (RESOURCE_EXHAUSTED).",
            ["limit"], registry=r,
        )  # fmt: skip
        self.engine_up = Gauge(
            "autoglm_engine_up", "1 while every served model is ready in Triton.", registry=r
        )
        # security/shared_limits.py: which books the per-principal limits use now, and the
        # shared store's failures (each switch is also logged once, as a warning).
        self.limits_backend = Gauge(
            "autoglm_limits_backend",
            "1 for the books per-principal limits are kept in now: redis (shared by every "
            "process), local (this process: configured, or the fallback's share), closed "
            "(the store is unreachable and calls are refused).",
            ["backend"], registry=r,
        )  # fmt: skip
        self.limits_store_errors = Counter(
            "autoglm_limits_store_errors",
            "Failed calls to the shared limits store (Redis), by operation: admit, release, "
            "renew, probe.",
            ["operation"], registry=r,
        )  # fmt: skip
        # Per model version (a canary's and the stable one's; only versions a route serves, so
        # the label stays bounded: engine/canary.py). The per-model families above keep their
        # labels, so dashboards and alerts on them are unchanged.
        self.version_requests = Counter(
            "autoglm_model_version_requests",
            "Generations answered by each served model version, by gRPC status code.",
            ["model", "version", "code"], registry=r,
        )  # fmt: skip
        self.version_ttft = Histogram(
            "autoglm_model_version_time_to_first_token_seconds",
            "Time from request start to the first generated token, per served model version.",
            ["model", "version"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self._children: dict[str, _ModelChildren] = {}
        self._req_cache: dict[tuple[str, str, str, str], Counter] = {}
        self._dur_cache: dict[tuple[str, str, str], Histogram] = {}
        for m in (*models, UNKNOWN_MODEL):
            self._bind(m)

    def _bind(self, model: str) -> _ModelChildren:
        c = _ModelChildren(
            ttft=self.ttft.labels(model),
            itl=self.itl.labels(model),
            prompt_tokens=self.prompt_tokens.labels(model),
            completion_tokens=self.completion_tokens.labels(model),
            generated_tokens=self.generated_tokens.labels(model),
            in_flight=self.in_flight.labels(model),
        )
        self._children[model] = c
        return c

    def _requests_child(self, model: str, api: str, rpc: str, code: str) -> Counter:
        key = (model, api, rpc, code)
        child = self._req_cache.get(key)
        if child is None:
            child = self._req_cache[key] = self.requests.labels(model, api, rpc, code)
        return child

    def _duration_child(self, model: str, api: str, rpc: str) -> Histogram:
        key = (model, api, rpc)
        child = self._dur_cache.get(key)
        if child is None:
            child = self._dur_cache[key] = self.duration.labels(model, api, rpc)
        return child

    def version_outcome(
        self, model: str, version: int, code: Enum | str, ttft: float | None
    ) -> None:
        """One generation answered by `version` of `model` (a route's version: bounded)."""
        name = code.name if isinstance(code, Enum) else code
        self.version_requests.labels(model, str(version), name).inc()
        if ttft is not None:
            self.version_ttft.labels(model, str(version)).observe(ttft)

    # --- per request -------------------------------------------------------------------------

    def request(self, model: str, rpc: str, api: str = "grpc") -> RequestObserver:
        """Start observing one call. `model` outside the served set counts as `_unknown`; `api`
        is the front door ("grpc", "openai") and `rpc` its method ("Generate", "GenerateStream",
        "CountTokens"; "chat.completions", "completions"), fixed sets."""
        children = self._children.get(model)
        if children is None:
            model = UNKNOWN_MODEL
            children = self._children[UNKNOWN_MODEL]
        return RequestObserver(self, children, model, api, rpc)

    # --- events outside a request ------------------------------------------------------------

    def auth_failure(self, reason: str) -> None:
        """`reason` must come from a fixed set (e.g. missing_token, invalid_token,
        permission_denied, no_client_cert), never from caller input."""
        self.auth_failures.labels(reason).inc()

    def audit_write_failed(self) -> None:
        self.audit_write_failures.inc()

    def audit_anchor_failed(self) -> None:
        self.audit_anchor_failures.inc()

    def limit_rejection(self, limit: str) -> None:
        """`limit` names the limit that refused (e.g. concurrency, queue, prompt_tokens)."""
        self.limit_rejections.labels(limit).inc()

    def set_engine_up(self, up: bool) -> None:
        self.engine_up.set(1 if up else 0)

    def set_limits_backend(self, backend: str) -> None:
        """`backend` is one of redis, local, closed: 1 for it, 0 for the others."""
        for name in ("redis", "local", "closed"):
            self.limits_backend.labels(name).set(1 if name == backend else 0)

    def limits_store_error(self, operation: str) -> None:
        """`operation`: admit, release, renew or probe (a fixed set)."""
        self.limits_store_errors.labels(operation).inc()

    # --- exposition --------------------------------------------------------------------------

    def start_http_server(self, host: str, port: int) -> tuple[MetricsServer, int]:
        """Serve `/metrics` of this registry on host:port (0 = a free port) in a daemon thread;
        returns the server (call `.stop()`) and the bound port."""
        httpd, thread = _prom_start_http_server(port, addr=host, registry=self.registry)
        bound = int(httpd.server_port)
        return MetricsServer(httpd, thread, bound), bound
