"""Path (b): through the façade's public API (`GenerateStream`) with mTLS + a bearer token.

A raw generated stub rather than autoglm.client, so the load generator's own cost stays as
small as the direct path's. The token goes as per-call metadata on the mTLS channel, exactly as
the direct path sends Triton's secret (and as autoglm.client does), rather than
as composed call credentials: gRPC Python runs a credentials plugin,
`access_token_call_credentials` included, on a new thread for every call (counted: one
`threading.Thread` per RPC), which would bill the load generator's thread start-ups to the
façade's added latency. The façade receives the same `authorization: Bearer …` header either
way, so what it does per call is unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence

import grpc

from autoglm.bench.workload import BenchRequest
from autoglm.server.devstack.pki import DevPki
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc


def facade_credentials(pki: DevPki) -> grpc.ChannelCredentials:
    """The mTLS channel credentials (the token goes per call: `token_metadata`)."""
    return grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class FacadePath:
    name = "facade"

    def __init__(
        self,
        endpoint: str,
        pki: DevPki,
        token: str,
        model: str,
        *,
        connections: int = 1,
        name: str = "facade",
        adapters: Sequence[str] = (),
    ) -> None:
        """`adapters`: LoRA adapters of `model` the requests name in turn (GenerateRequest.adapter),
        so concurrent streams mix them; none = the base model."""
        self.name = name  # "relay": the same client against bare_relay.py (autoglm bench --floor)
        # SO_REUSEPORT spreads *connections* over the façade's worker processes, so a scale-out
        # run needs several; a local subchannel pool per channel keeps gRPC from sharing one.
        options = [("grpc.use_local_subchannel_pool", 1)] if connections > 1 else []
        creds = facade_credentials(pki)
        self._metadata = token_metadata(token)
        self._channels = [
            grpc.aio.secure_channel(endpoint, creds, options=options) for _ in range(connections)
        ]
        self._stubs = [pb_grpc.TextGenerationStub(c) for c in self._channels]
        self._next = itertools.count()
        self._model = model
        self._adapters = itertools.cycle(adapters) if adapters else None

    async def stream(self, req: BenchRequest, request_id: str = "") -> AsyncIterator[int]:
        """Token counts per message; `request_id` (optional) lets a caller join its timings with
        the façade's spans (the generation span's `gen_ai.response.id`)."""
        request = pb.GenerateRequest(
            request_id=request_id,
            model=self._model,
            prompt=req.prompt,
            sampling=pb.SamplingParams(max_tokens=req.max_tokens, temperature=0.0),
        )
        if self._adapters is not None:
            request.adapter = next(self._adapters)
        stub = self._stubs[next(self._next) % len(self._stubs)]
        call = stub.GenerateStream(request, metadata=self._metadata)
        try:
            async for msg in call:
                yield len(msg.token_ids)
        finally:
            call.cancel()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
