"""The output tensors of the vLLM backend's responses, from the CPU engine's generation steps.

Pure (numpy arrays by output name), mirroring `GenerateRequest.create_response` of
triton-inference-server/vllm_backend at 8de0c14 (`src/utils/request.py`), with vLLM's one
output per request (`n` = 1):

- `text_output` [1]: a streamed response carries the text new since the previous one; the one
  response of a non-streamed request carries the whole text, after the prompt when
  `exclude_input_in_output` is false ("prepend_input").
- `finish_reason` [1], when `return_finish_reason`: `str(output.finish_reason)`, so "None" until
  the last response, then "stop" or "length".
- `cumulative_logprob` [1] FP32, when `return_cumulative_logprob`: the sum of the chosen tokens'
  log-probabilities so far; vLLM computes it only when `sampling_parameters` asks for
  `logprobs`, and otherwise sends `np.asarray([None], dtype=np.float32)`, which is NaN.
- `logprobs` [1], when `return_logprobs`: JSON, a list with one entry per new token of
  `{token_id: {"logprob", "rank", "decoded_token"}}` (`json.dumps` makes the id a string);
  the text "null" when `sampling_parameters` did not ask for logprobs.
- `num_input_tokens`, when `return_num_input_tokens`: `np.asarray(len(prompt_token_ids),
  dtype=np.uint32)` — a 0-d array, as the backend builds it (its config says dims [1]; Triton
  does not check a python model's output shapes), image tokens included.
- `num_output_tokens` [1], when `return_num_output_tokens`: the tokens new in this response
  (a non-streamed response: all of them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autoglm.triton_models import vllm_contract as vc
from autoglm.triton_models.cpu_vl.request import VlRequest

__all__ = ["VlResponses"]


@dataclass(slots=True)
class VlResponses:
    """Accumulates one request's steps and builds each response's output tensors."""

    request: VlRequest
    # The text of one token for `decoded_token`: vLLM decodes each id alone with the
    # tokenizer's defaults (`convert_ids_list_to_tokens`: `tokenizer.decode([token_id])`).
    decode_token: Callable[[int], str]
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    num_input_tokens: int = 0
    finish_reason: str | None = None

    def add(
        self,
        text: str,
        token_ids: tuple[int, ...],
        logprobs: tuple[float, ...],
        num_input_tokens: int,
        finish_reason: str | None,
    ) -> dict[str, np.ndarray]:
        """Records one generation step; returns the outputs of its streamed response."""
        if self.request.logprobs is not None and len(logprobs) != len(token_ids):
            raise ValueError(f"{len(logprobs)} log-probabilities for {len(token_ids)} tokens")
        self.text.append(text)
        self.token_ids.extend(token_ids)
        self.logprobs.extend(logprobs)
        self.num_input_tokens = num_input_tokens
        self.finish_reason = finish_reason
        return self._outputs(text, token_ids, logprobs)

    def whole(self) -> dict[str, np.ndarray]:
        """The outputs of the one response of a non-streamed request: everything so far."""
        prefix = self.request.prompt if self.request.prepend_input else ""
        return self._outputs(
            prefix + "".join(self.text), tuple(self.token_ids), tuple(self.logprobs)
        )

    def _outputs(
        self, text: str, token_ids: tuple[int, ...], logprobs: tuple[float, ...]
    ) -> dict[str, np.ndarray]:
        req = self.request
        out = {vc.TEXT_OUTPUT.name: np.asarray([text.encode("utf-8")], dtype=np.object_)}
        if req.return_finish_reason:
            reason = str(self.finish_reason).encode()  # "None" until the end, as str(None)
            out[vc.FINISH_REASON.name] = np.asarray([reason], dtype=np.object_)
        if req.return_cumulative_logprob:
            total = math.fsum(self.logprobs) if req.logprobs is not None else None
            out[vc.CUMULATIVE_LOGPROB.name] = np.asarray([total], dtype=np.float32)
        if req.return_logprobs:
            out[vc.LOGPROBS.name] = np.asarray(
                [self._logprobs_json(token_ids, logprobs)], dtype=np.object_
            )
        if req.return_num_input_tokens:
            out[vc.NUM_INPUT_TOKENS.name] = np.asarray(self.num_input_tokens, dtype=np.uint32)
        if req.return_num_output_tokens:
            out[vc.NUM_OUTPUT_TOKENS.name] = np.asarray([len(token_ids)], dtype=np.uint32)
        return out

    def _logprobs_json(self, token_ids: tuple[int, ...], logprobs: tuple[float, ...]) -> bytes:
        if self.request.logprobs is None:
            return b"null"  # vLLM's output.logprobs is None
        # With `logprobs: 0` vLLM lists the chosen token only. Its rank (1-based, in the
        # distribution the log-probability comes from) is not computed by this engine: null,
        # which vLLM's `Logprob.rank: int | None` allows.
        entries = [
            {token: {"logprob": lp, "rank": None, "decoded_token": self.decode_token(token)}}
            for token, lp in zip(token_ids, logprobs, strict=True)
        ]
        return json.dumps(entries).encode("utf-8")
