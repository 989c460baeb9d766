"""Path (b): through the façade's public API (`GenerateStream`) with mTLS + a bearer token.

A raw generated stub rather than autoglm.client, so the load generator's own cost stays as
small as the direct path's; credentials are composed as the client does (style.md #5).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import grpc

from autoglm.server.bench.workload import BenchRequest
from autoglm.server.pki import DevPki
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc


def facade_credentials(pki: DevPki, token: str) -> grpc.ChannelCredentials:
    tls = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))


class FacadePath:
    name = "facade"

    def __init__(
        self, endpoint: str, pki: DevPki, token: str, model: str, *, connections: int = 1
    ) -> None:
        # SO_REUSEPORT spreads *connections* over the façade's worker processes, so a scale-out
        # run needs several; a local subchannel pool per channel keeps gRPC from sharing one.
        options = [("grpc.use_local_subchannel_pool", 1)] if connections > 1 else []
        creds = facade_credentials(pki, token)
        self._channels = [
            grpc.aio.secure_channel(endpoint, creds, options=options) for _ in range(connections)
        ]
        self._stubs = [pb_grpc.TextGenerationStub(c) for c in self._channels]
        self._next = itertools.count()
        self._model = model

    async def stream(self, req: BenchRequest) -> AsyncIterator[int]:
        request = pb.GenerateRequest(
            model=self._model,
            prompt=req.prompt,
            sampling=pb.SamplingParams(max_tokens=req.max_tokens, temperature=0.0),
        )
        stub = self._stubs[next(self._next) % len(self._stubs)]
        call = stub.GenerateStream(request)
        try:
            async for msg in call:
                yield len(msg.token_ids)
        finally:
            call.cancel()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
