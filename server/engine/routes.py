"""grpc.aio channels of one EngineClient to Triton: readiness checks and model control.

Inference does not use them (engine/reader.py has its own connections). One endpoint: one
channel. Several replicas (replicas.py): one channel with gRPC's `round_robin` over the endpoints
health.py judged healthy (`use`; `ModelReady` of "the data path" asks it), and a channel per
endpoint for probes and model control, which must reach every replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from tritonclient.grpc import service_pb2_grpc

from autoglm.server.engine import replicas

Stub = service_pb2_grpc.GRPCInferenceServiceStub
# After a new replica channel is READY (one subchannel up), the time the others get to finish
# their handshakes before it takes traffic.
_SETTLE_S = 0.2


class EngineRoutes:
    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        tls_name: str | None = None,
    ) -> None:
        self.spec = replicas.parse_target(target)
        self.target = target
        self._credentials = credentials
        name = tls_name or (self.spec.tls_name if self.spec.replicated else None)
        self._options = [
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
            # Several endpoints in one channel: spread requests over all of them, not the first.
            ("grpc.lb_policy_name", "round_robin"),
            # Reconnect within a second after Triton restarts (gRPC's default backoff grows to
            # 120 s, during which every call would fail fast with UNAVAILABLE).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # A channel over resolved addresses has no authority that a certificate names.
            *((("grpc.ssl_target_name_override", name),) if name and credentials else ()),
        ]
        self._endpoint_channels: dict[str, tuple[grpc.aio.Channel, Stub]] = {}
        self._retired: set[asyncio.Task[None]] = set()
        if self.spec.replicated:
            # Until health.py has resolved and probed the endpoints: the target as gRPC sees it
            # (a dns:/// target resolves inside gRPC; an address list is used as listed).
            self._healthy: tuple[str, ...] = ()
            self._channel = self._open(self._initial_target())
        else:
            self._healthy = (target,)
            self._channel = self._open(target)
            self._endpoint_channels[target] = (self._channel, Stub(self._channel))
        self.stub = Stub(self._channel)  # the healthy endpoints' channel, replaced by `use`

    def _initial_target(self) -> str:
        if self.spec.raw.startswith("dns:"):
            return self.spec.raw  # gRPC resolves it itself
        if all(h.is_ip for h in self.spec.hosts):
            return replicas.channel_target([str(h) for h in self.spec.hosts])
        return str(self.spec.hosts[0])  # names: resolved by health.py's first round

    def _open(self, target: str) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(target, options=self._options)
        return grpc.aio.secure_channel(target, self._credentials, options=self._options)

    async def endpoints(self) -> list[str]:
        """The endpoints to probe now: the target itself, or what the replica target resolves to."""
        if not self.spec.replicated:
            return [self.target]
        return await asyncio.to_thread(replicas.resolve, self.spec)

    @property
    def healthy(self) -> tuple[str, ...]:
        return self._healthy

    async def use(
        self, healthy: Sequence[str], *, connect_timeout_s: float = 5.0, drain_s: float = 3600.0
    ) -> bool:
        """Route new calls over `healthy` only (round_robin); True if that changed the route.

        The new channel connects first: a fresh round_robin channel hands every call it gets
        before its subchannels are up to the first one that is (seen here: a burst of 8 streams
        all on one replica), so it takes traffic only once connected (plus a moment for the
        other replicas' handshakes). Calls in flight keep their channel: the previous one is
        closed once they are done (or after `drain_s`). Single-endpoint targets never change.
        """
        new = tuple(sorted(healthy))
        if not self.spec.replicated or not new or new == self._healthy:
            return False
        channel = self._open(replicas.channel_target(new))
        channel.get_state(try_to_connect=True)
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout_s)
            await asyncio.sleep(_SETTLE_S)
        except TimeoutError:
            await channel.close()
            return False  # not reachable after all: keep the current route, retry next round
        old = self._channel
        self._channel = channel
        self.stub = Stub(channel)
        self._healthy = new
        task = asyncio.get_running_loop().create_task(old.close(grace=drain_s))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
        return True

    def endpoint_stub(self, endpoint: str) -> Stub:
        """The channel of `endpoint` alone (probes, model control), opened on first use."""
        entry = self._endpoint_channels.get(endpoint)
        if entry is None:
            channel = self._open(endpoint)
            entry = self._endpoint_channels[endpoint] = (channel, Stub(channel))
        return entry[1]

    async def forget(self, keep: Sequence[str]) -> None:
        """Close the probe/control channels of endpoints that are gone (DNS no longer lists)."""
        for endpoint in [e for e in self._endpoint_channels if e not in keep]:
            if endpoint == self.target:
                continue
            channel, _ = self._endpoint_channels.pop(endpoint)
            await channel.close()

    async def control_stubs(self) -> list[Stub]:
        """One stub per endpoint for model control (every replica must load a model)."""
        if not self.spec.replicated:
            return [self.stub]
        return [self.endpoint_stub(e) for e in await self.endpoints()]

    async def close(self) -> None:
        await self._channel.close()
        for channel, _ in self._endpoint_channels.values():
            if channel is not self._channel:
                await channel.close()
        for task in list(self._retired):
            task.cancel()
