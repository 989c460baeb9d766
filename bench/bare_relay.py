"""BENCHMARK TOOL, not a product path: the floor under any grpc.aio façade (issue #8).

A bare grpc.aio server (a subprocess of `autoglm bench --floor`) whose `GenerateStream` does
only what a text API in front of Triton cannot skip: decode the request, tokenize the prompt,
call Triton through the façade's own engine client and relay (server/engine/client.py,
server/generation/relay.py) and stream the token ids back, one message per batch, over the same
mTLS as the façade. No bearer token, no
tracing, no metrics, no validation, no admission, no detokenization, no log line, no audit.

Measured side by side with the direct path and the façade, it tells what the façade's targets
can be on the machine at hand: the latency a grpc.aio hop adds by itself, with nothing of ours
in it, and how much of the façade's added latency is its own work. It serves greedy sampling
with `sampling.max_tokens` new tokens and checks nothing: never expose it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import grpc

from autoglm.server.engine.client import EngineClient, EngineRequest, EngineSampling
from autoglm.server.engine.link import EngineLink
from autoglm.server.generation.relay import Push, Relay
from autoglm.server.models import ModelSpec, ServedModel, load_model
from autoglm.v1 import text_generation_pb2 as pb
from autoglm.v1 import text_generation_pb2_grpc as pb_grpc

# What the façade sends for temperature 0 (generation/plan.py engine_sampling: greedy = top_k 1).
_GREEDY = EngineSampling(
    temperature=1.0, runtime_top_k=1, runtime_top_p=1.0, seed=0, repetition_penalty=1.0
)


class BareRelay(pb_grpc.TextGenerationServicer):
    def __init__(self, models: dict[str, ServedModel], engine: EngineClient) -> None:
        self._models = models
        self._engine = engine

    async def GenerateStream(  # type: ignore[override]
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        model = self._models[request.model]
        engine_request = EngineRequest(
            triton_model=model.spec.triton_model,
            request_id=request.request_id,
            input_ids=model.encoder.encode_prompt(request.prompt),
            max_new_tokens=request.sampling.max_tokens,
            end_id=model.end_id,
            pad_id=model.pad_id,
            sampling=_GREEDY,
        )
        engine = self._engine

        def read(push: Push) -> Coroutine[Any, Any, None]:
            return engine.stream_into(engine_request, push)

        async with Relay(read) as relay:
            while (batch := await relay.take()) is not None:
                yield pb.GenerateResponse(token_ids=batch.ids)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bare_relay", description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--triton", required=True, help="Triton's unix socket target (unix:/…)")
    p.add_argument("--triton-secret-file", type=Path, required=True)
    p.add_argument("--tls", nargs=3, type=Path, required=True, metavar=("CERT", "KEY", "CA"))
    p.add_argument("--model", action="append", required=True, metavar="NAME=TRITON:TOKENIZER_DIR")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    if not args.triton.startswith("unix:"):
        raise SystemExit(f"--triton {args.triton!r}: the bare relay reaches Triton by unix socket")
    link = EngineLink(args.triton_secret_file.read_text().strip())
    engine = EngineClient(args.triton, metadata=link.metadata())
    models: dict[str, ServedModel] = {}
    for item in args.model:
        name, _, rest = item.partition("=")
        triton_model, _, tokenizer_dir = rest.partition(":")
        spec = ModelSpec(name=name, triton_model=triton_model, tokenizer_dir=Path(tokenizer_dir))
        models[name] = load_model(spec)
    server = grpc.aio.server()
    pb_grpc.add_TextGenerationServicer_to_server(BareRelay(models, engine), server)
    cert, key, ca = args.tls
    creds = grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], ca.read_bytes(), require_client_auth=True
    )
    port = server.add_secure_port(args.listen, creds)
    await server.start()
    print(f"bare relay listening on port {port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await engine.close()


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
