"""Triton python-backend adapter of the CPU reference engine (decoupled).

Thin on purpose: tensor parsing lives in cpu_engine/request.py, generation in
cpu_engine/runner.py. Each request runs in a worker thread and streams one `output_ids` response
per token (or one at the end when `streaming` is false), with `output_log_probs` when the request
sets `return_log_probs`, then a final empty response. It honours
cancellation between tokens, as the tensorrtllm backend does every `cancellation_check_period_ms`.

The request object is touched only inside `execute` (inputs read, response sender taken); worker
threads use the response sender alone, `sender.is_cancelled()` included — as TensorRT-LLM's and
vLLM's python models do. Seen here (Triton 2.51): a worker thread touching a request that was
cancelled while it waited in the pool (a caller's deadline expired in the queue) segfaults
tritonserver (libtriton_python → libtritonserver, SIGSEGV).

A refused request (a bad tensor, or a value the sampler cannot use: cpu_engine/sampling.py)
gets Triton's INVALID_ARG with a message naming the tensor (refusal.py); any other failure is
INTERNAL. Cancellations are counted in a custom metric in Triton's own /metrics endpoint
(`autoglm_engine_requests_total{outcome="cancelled"}`). A quantized CPU version (parameters
`precision`, `fake_quant_dir`) serves the build's ModelOpt fake-quant model
(cpu_engine/fake_quant.py).

LoRA adapters come as the `tensorrtllm` backend takes them (`lora_task_id`, with `lora_weights`
and `lora_config` on a task's first request; lora_contract.py) and are applied per request
(cpu_engine/lora.py); a task id alone that is not cached gets the executor's own error text.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import triton_python_backend_utils as pb_utils

from autoglm.triton_models.backend_io import (
    EngineMetrics,
    error_response,
    ids_response,
    param,
    refusal_response,
    take_inputs,
)
from autoglm.triton_models.cpu_engine.lora import DEFAULT_CACHE_SIZE, LoraNotCached
from autoglm.triton_models.cpu_engine.request import (
    ENGINE_INPUTS,
    parse_max_input_len,
    parse_request,
)
from autoglm.triton_models.cpu_engine.runner import CausalLMRunner
from autoglm.triton_models.cpu_engine.versions import TEST_ONLY_FAIL, fails_on_purpose, for_version
from autoglm.triton_models.refusal import Refusal


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        # This version's own parameters, if the config has per-version ones (versions.py).
        config = for_version(json.loads(args["model_config"]), args["model_version"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the CPU reference engine must be decoupled")
        self.fail_on_purpose = fails_on_purpose(config)  # TEST ONLY: never on by default
        fake_quant_dir = param(config, "fake_quant_dir")
        self.runner = CausalLMRunner(
            Path(param(config, "hf_model_dir")),
            torch_threads=int(param(config, "torch_threads")),
            precision=param(config, "precision"),
            fake_quant_dir=Path(fake_quant_dir) if fake_quant_dir else None,
            # Optional: a repository rendered before the parameter existed keeps the default.
            lora_cache_size=int(
                config["parameters"].get("lora_cache_size", {}).get("string_value")
                or DEFAULT_CACHE_SIZE
            ),
        )
        # Optional: a repository rendered before the parameter existed has no limit.
        self.max_input_len = parse_max_input_len(
            config["parameters"].get("max_input_len", {}).get("string_value", "")
        )
        workers = int(param(config, "max_concurrency"))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generate")
        # A free worker before a request is taken: the rest wait in Triton's own queue (counted
        # by nv_inference_pending_request_count, cancelled there by Triton), not in this process.
        self.slots = threading.BoundedSemaphore(workers)
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"{args['model_name']} version {args['model_version']}: {self.runner.precision}"
            + (f" (ModelOpt fake-quant from {fake_quant_dir})" if fake_quant_dir else "")
            + (f", max_input_len {self.max_input_len}" if self.max_input_len else "")
        )
        self.metrics = EngineMetrics(args)  # Triton custom metrics, kept on the instance
        self.outcomes, self.tokens = self.metrics.outcomes, self.metrics.tokens
        self.lock = threading.Lock()

    def execute(self, requests: list) -> None:
        for request in requests:
            self.slots.acquire()  # released when the worker is done with this request
            # Everything the worker needs, taken now: the request object stays in this call.
            sender = request.get_response_sender()
            tensors = take_inputs(request, ENGINE_INPUTS)  # the façade's and the LoRA tensors
            self.pool.submit(self._serve_logged, request.request_id(), sender, tensors)
        return None

    def _serve_logged(self, request_id: str, sender, tensors: dict) -> None:
        # A worker thread's exception would vanish inside the executor: log it.
        try:
            self._serve(sender, tensors)
        except Exception as exc:
            self.logger.log_error(f"request {request_id}: {exc!r}")
            raise
        finally:
            self.slots.release()

    def _serve(self, sender, tensors: dict) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if self.fail_on_purpose:  # the test-only failure switch (cpu_engine/versions.py)
            self._count("failed")
            sender.send(error_response(f"{TEST_ONLY_FAIL} is set"), flags=final)
            return
        try:
            req = parse_request(
                tensors, vocab_size=self.runner.vocab_size, max_input_len=self.max_input_len
            )
        except Refusal as exc:
            self._count("rejected")
            sender.send(refusal_response(exc), flags=final)
            return
        generated: list[int] = []
        # With return_log_probs: every value so far, in each response, as TensorRT-LLM sends
        # output_log_probs (contract.OUTPUT_LOG_PROBS); None keeps the tensor out.
        log_probs: list[float] | None = [] if req.return_log_probs else None
        try:
            for token, log_prob in self.runner.steps(req, is_cancelled=sender.is_cancelled):
                generated.append(token)
                if log_probs is not None:
                    log_probs.append(log_prob)  # type: ignore[arg-type]
                if req.streaming:
                    sender.send(ids_response([token], log_probs))
            self._add_tokens(len(generated))
            if sender.is_cancelled():
                self._count("cancelled")
                sender.send(flags=final)
                return
            if not req.streaming:
                ids = generated if req.exclude_input_in_output else [*req.input_ids, *generated]
                sender.send(ids_response(ids, log_probs))
            self._count("completed")
            sender.send(flags=final)
        except LoraNotCached as exc:  # the executor's own text: the façade resends the weights
            self._count("rejected")
            sender.send(error_response(str(exc)), flags=final)
        except Refusal as exc:  # a value the sampler cannot use (e.g. logits / it overflow)
            self._add_tokens(len(generated))
            self._count("rejected")
            sender.send(refusal_response(exc), flags=final)
        except Exception as exc:  # the engine must always close the request
            self._count("failed")
            self.logger.log_error(f"generation failed: {exc!r}")
            sender.send(
                error_response(f"generation failed: {exc}"),
                flags=final,
            )

    # Every custom-metric update holds self.lock: the python backend's (Triton 2.51) metric
    # calls are not safe from two threads at once. The tokens counter was once updated outside
    # the lock, and two workers finishing together crashed tritonserver (SIGSEGV in
    # libtriton_python.so, or SIGABRT after boost::interprocess::lock_exception) in the
    # real-model load test: 7 of 11 runs at 4 workers, 8 of 8 at 2; with the lock 0 of 3 and
    # 0 of 2; with metrics off 0 of 2 (docs/reliability.md).
    def _count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome].increment(1)

    def _add_tokens(self, n: int) -> None:
        with self.lock:
            self.tokens.increment(n)

    def finalize(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
