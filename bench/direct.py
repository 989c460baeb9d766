"""Path (a): straight to Triton's `ModelStreamInfer`, as a bare grpc.aio consumer.

It uses the façade's own request building and response parsing (server/engine/client.py) and the
engine link's mTLS + restricted-protocol secret, and nothing else: no tokenization (the
workload carries the prompt's ids), no detokenization, no auth, no tracing, no metrics.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import grpc
from tritonclient.grpc import service_pb2_grpc

from autoglm.bench.workload import BenchRequest
from autoglm.server.engine.client import (
    EngineRequest,
    EngineSampling,
    build_infer_request,
    parse_stream_response,
)
from autoglm.server.engine.link import EngineLink
from autoglm.server.engine.reader import FINISH_GRACE_S

# What the façade sends for temperature 0 (generation/plan.py engine_sampling: greedy = top_k 1).
GREEDY = EngineSampling(
    temperature=1.0, runtime_top_k=1, runtime_top_p=1.0, seed=0, repetition_penalty=1.0
)


class DirectPath:
    def __init__(
        self,
        target: str,
        link: EngineLink,
        triton_model: str,
        end_id: int,
        pad_id: int,
        *,
        name: str = "direct",
    ) -> None:
        # With --floor the same consumer runs twice more: "control" (straight to Triton again:
        # the run's own noise) and "hop" (through byte_hop.py, `target` its socket).
        self.name = name
        self._channel = link.aio_channel(target)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = link.metadata()
        self._model = triton_model
        self._end_id = end_id
        self._pad_id = pad_id
        self._ids = itertools.count()

    async def stream(self, req: BenchRequest) -> AsyncIterator[int]:
        request = EngineRequest(
            triton_model=self._model,
            request_id=f"bench-{next(self._ids)}",
            input_ids=req.prompt_ids,
            max_new_tokens=req.max_tokens,
            end_id=self._end_id,
            pad_id=self._pad_id,
            sampling=GREEDY,
        )
        call = self._stub.ModelStreamInfer(metadata=self._metadata)
        finished = False
        try:
            await call.write(build_infer_request(request))
            await call.done_writing()
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise ConnectionError("Triton closed the stream before the final response")
                ids, final = parse_stream_response(resp)
                yield len(ids)
                if final:
                    finished = True
                    return
        finally:
            if finished:
                let_finish(call)  # as the façade does: no cancel after the final response
            else:
                call.cancel()

    async def close(self) -> None:
        await self._channel.close()


# Calls whose final response has been read, kept referenced until Triton's OK status arrives
# (grpc.aio cancels a call that is garbage-collected unfinished).
_FINISHING: set[grpc.aio.StreamStreamCall] = set()


def let_finish(call: grpc.aio.StreamStreamCall) -> None:
    """Let a call whose final response has arrived end on Triton's own status, not a cancel, as
    the façade's reader does (server/engine/reader.py): Triton 2.51 can leak a request cancelled
    right after its final response, and the model version it ran on then never unloads.
    Cancelled after `FINISH_GRACE_S` if the status never comes."""
    if call.done():
        return
    _FINISHING.add(call)
    timer = asyncio.get_running_loop().call_later(FINISH_GRACE_S, call.cancel)

    def finished(_: object) -> None:
        timer.cancel()
        _FINISHING.discard(call)

    call.add_done_callback(finished)
