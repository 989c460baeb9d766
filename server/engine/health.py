"""Deep health: readiness means the engine generated a token recently, per Triton endpoint.

Every `interval_s`, for every endpoint (one Triton, or each replica of a replicated target):
  1. Triton must report every served model ready (`ModelReady`);
  2. each model must have produced a token recently: either real traffic streamed one within the
     last interval (single endpoint only: with several, traffic cannot be attributed to one), or
     a one-token generation probe on that endpoint succeeds within `probe_timeout_s`.
An endpoint that fails is ejected from inference's round robin (client.py `use_endpoints`)
until it passes again (the probes go the way inference goes: reader.py); the façade is
SERVING while at least one endpoint passes.
So a wedged engine — port open, Triton "ready", but no tokens — turns readiness off within
`interval_s + probe_timeout_s`, and a dead or wedged replica stops receiving new calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from grpc_health.v1 import health, health_pb2

from autoglm.server.engine.client import EngineClient, EngineRequest, EngineSampling
from autoglm.server.engine.text_request import TextEngineRequest
from autoglm.server.errors import DeadlineExceeded, EngineFailure, EngineUnavailable
from autoglm.server.models import ModelRegistry, ServedModel
from autoglm.server.telemetry.metrics import FacadeMetrics

log = logging.getLogger("autoglm.server.engine.health")

_GREEDY = EngineSampling(
    temperature=1.0, runtime_top_k=1, runtime_top_p=1.0, seed=0, repetition_penalty=1.0
)


def probe_request(model: ServedModel) -> EngineRequest | TextEngineRequest:
    """A one-token greedy generation from a one-token prompt: the cheapest real inference (in
    the model's contract: token ids, or text for a vLLM-contract engine)."""
    if model.returns_text:
        return TextEngineRequest(
            triton_model=model.spec.triton_model,
            request_id="autoglm-health-probe",
            prompt="ok",
            images=(),
            max_new_tokens=1,
            sampling=_GREEDY,
        )
    return EngineRequest(
        triton_model=model.spec.triton_model,
        request_id="autoglm-health-probe",
        input_ids=[model.end_id],
        max_new_tokens=1,
        end_id=model.end_id,
        pad_id=model.pad_id,
        sampling=_GREEDY,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    endpoint: str
    ok: bool
    reason: str = ""


class EngineHealth:
    """Runs the checks and publishes them: grpc.health.v1 status, metric, endpoint routing."""

    def __init__(
        self,
        engine: EngineClient,
        registry: ModelRegistry,
        servicer: health.aio.HealthServicer,
        metrics: FacadeMetrics,
        *,
        services: tuple[str, ...],
        interval_s: float,
        probe_timeout_s: float,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.servicer = servicer
        self.metrics = metrics
        self.services = services
        self.interval_s = interval_s
        self.probe_timeout_s = probe_timeout_s
        self.ready: bool | None = None
        self._reasons: dict[str, str] = {}  # endpoint -> last failure ("" = passing)

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any surprise; readiness goes off
                log.exception("health check failed unexpectedly")
                await self._publish(False)
            await asyncio.sleep(self.interval_s)

    async def check_once(self) -> bool:
        endpoints = await self.engine.endpoints()
        verdicts = await asyncio.gather(*(self._check_endpoint(e) for e in endpoints))
        for v in verdicts:
            if self._reasons.get(v.endpoint) != v.reason:
                if v.ok:
                    log.info("engine endpoint %s: healthy", v.endpoint)
                else:
                    log.warning("engine endpoint %s: UNHEALTHY: %s", v.endpoint, v.reason)
                self._reasons[v.endpoint] = v.reason
        healthy = [v.endpoint for v in verdicts if v.ok]
        if await self.engine.use_endpoints(healthy, connect_timeout_s=self.probe_timeout_s):
            log.info("routing new engine calls to %s", ", ".join(healthy))
        await self.engine.forget_endpoints(endpoints)
        await self._publish(bool(healthy))
        return bool(healthy)

    async def _check_endpoint(self, endpoint: str) -> Verdict:
        for model in self.registry:
            name = model.spec.triton_model
            ready = await self.engine.model_ready(
                name, timeout=self.probe_timeout_s, endpoint=endpoint
            )
            if not ready:
                return Verdict(endpoint, False, f"model {name} not ready")
        for model in self.registry:
            if self._recent_tokens(model):
                continue
            try:
                # A running canary is its own Triton model (model_versions.py): the probe
                # reaches the stable version, and a failing canary, judged by the rollback
                # guard (canary_guard.py), never ejects the endpoint for everyone.
                request = probe_request(model)
                await self.engine.probe(endpoint, request, timeout=self.probe_timeout_s)
            except DeadlineExceeded:
                return Verdict(
                    endpoint,
                    False,
                    f"model {model.spec.triton_model}: no token within "
                    f"{self.probe_timeout_s:g} s (wedged?)",
                )
            except (EngineUnavailable, EngineFailure) as exc:
                return Verdict(endpoint, False, f"model {model.spec.triton_model}: {exc}")
        return Verdict(endpoint, True)

    def _recent_tokens(self, model: ServedModel) -> bool:
        if self.engine.spec.replicated:
            return False
        at = self.engine.last_token_at.get(model.spec.triton_model, 0.0)
        return time.monotonic() - at < self.interval_s

    async def _publish(self, ready: bool) -> None:
        if ready == self.ready:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.metrics.set_engine_up(ready)
        for service in self.services:
            await self.servicer.set(service, status)
        log.log(
            logging.INFO if ready else logging.WARNING,
            "engine %s",
            "ready" if ready else "NOT ready",
        )
        self.ready = ready
