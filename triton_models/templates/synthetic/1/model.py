"""SYNTHETIC ENGINE (benchmark tool): Triton python-backend adapter, decoupled.

It streams `request_output_len` ids from a fixed cycle of real vocabulary ids, starting at
position `seed mod cycle length` (so each request's output is known in advance), one `output_ids`
response per token at `tokens_per_second` per stream (0 = as fast as possible), then a final
empty response; it checks `sender.is_cancelled()` before the first token and then every
`cancellation_check_period_ms`, as the tensorrtllm backend does. As in the CPU reference
engine, the request object is touched only inside `execute`. Requests are parsed by the CPU
reference engine's parser, so both engines accept and reject exactly the same tensors; the
penalties are ignored and `return_log_probs` gets a synthetic 0.0 per token. The
pure logic (id cycle, pacing, the cancellation check) lives in autoglm/triton_models/synthetic.py.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

from autoglm.triton_models.backend_io import error_response, ids_response, param, take_inputs
from autoglm.triton_models.cpu_engine.request import RequestError, parse_request
from autoglm.triton_models.synthetic import (
    CancellationCheck,
    Pacer,
    parse_token_ids,
    synthetic_ids,
)

# The synthetic engine has no vocabulary of its own; accept any non-negative int32 id.
_ANY_VOCAB = 2**31 - 1
# SYNTHETIC, not a model's: with return_log_probs every token reports log-probability 0.0 (as if
# certain), one value per response for its one new id (the façade reads the values of a
# response's new ids either way, contract.new_log_probs). Penalties are parsed and ignored.
_SYNTHETIC_LOG_PROB = [0.0]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the synthetic engine must be decoupled")
        self.tokens_per_second = float(param(config, "tokens_per_second"))
        self.cycle = parse_token_ids(param(config, "token_ids"))
        self.check_period_s = int(param(config, "cancellation_check_period_ms")) / 1000
        workers = int(param(config, "max_concurrency"))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthetic")
        self.logger = pb_utils.Logger

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            tensors = take_inputs(request)
            self.pool.submit(self._serve_logged, request.request_id(), sender, tensors)
        return None

    def _serve_logged(self, request_id: str, sender, tensors: dict) -> None:
        try:
            self._serve(sender, tensors)
        except Exception as exc:  # a worker's exception would vanish inside the executor
            self.logger.log_error(f"request {request_id}: {exc!r}")

    def _serve(self, sender, tensors: dict) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            req = parse_request(tensors, vocab_size=_ANY_VOCAB)
        except RequestError as exc:
            sender.send(error_response(str(exc)), flags=final)
            return
        pacer = Pacer(self.tokens_per_second, time.monotonic())
        check = CancellationCheck(self.check_period_s)
        generated: list[int] = []
        log_probs = req.return_log_probs
        # The seed picks where in the cycle this stream starts (no seed: the beginning).
        start = req.sampling.seed or 0
        for token in synthetic_ids(self.cycle, req.max_new_tokens, req.end_id, start):
            delay = pacer.delay(len(generated), time.monotonic())
            if delay > 0:
                time.sleep(delay)
            if check.due(time.monotonic()) and sender.is_cancelled():
                sender.send(flags=final)
                return
            generated.append(token)
            if req.streaming:
                sender.send(ids_response([token], _SYNTHETIC_LOG_PROB if log_probs else None))
        if not req.streaming:
            ids = generated if req.exclude_input_in_output else [*req.input_ids, *generated]
            sender.send(ids_response(ids, [0.0] * len(generated) if log_probs else None))
        sender.send(flags=final)

    def finalize(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
