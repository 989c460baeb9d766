"""The second engine contract: Triton's vLLM backend (text and images in, text out).

For models TensorRT-LLM cannot build (GLM-4.1V, the architecture of Open-AutoGLM's own
AutoGLM-Phone-9B). NVIDIA/TensorRT-LLM `docs/source/reference/support-matrix.md` (the 1.x
releases): the engine path's multi-modal list is BLIP2, CogVLM, Deplot, Fuyu, Kosmos, the LLaVA
family, NeVA, Nougat, Phi-3-vision, VILA, MLLaMA / Llama 3.2 VLM and Qwen-VL, and its GLM entry
is text only (GLM-4-9B, `chatglm` family); the PyTorch backend's table has no
`Glm4vForConditionalGeneration` either, and the engine path's multimodal support ends after 1.2.

Imported by both sides, like contract.py: the façade builds requests and
reads responses with it, and the CPU reference engine for vision-language models
(`cpu_vl/`) implements the same tensors, so the façade cannot tell it from the vLLM backend.

Source of names, dtypes, dims and semantics: triton-inference-server/vllm_backend at commit
8de0c14 (main after the 25.12 release; the newest snapshot available here; pin the tag of the
`tritonserver:<yy.mm>-vllm-python-py3` container you deploy and re-check):
- `src/model.py::_auto_complete_inputs_and_outputs`: the inputs and outputs below, and
  `set_max_batch_size(0)` (no batch dimension: `dims` are the whole shape) with a decoupled
  transaction policy.
- `src/utils/request.py::GenerateRequest`: `text_input[0]` is the prompt as UTF-8 text (vLLM
  tokenizes it); each element of `image` is the base64 text of one image *file*, decoded with
  Pillow and converted to RGB, passed as `multi_modal_data={"image": [...]}`; `stream` true
  requires `exclude_input_in_output` true; `sampling_parameters[0]` is a JSON object of vLLM
  `SamplingParams` keyword arguments (`TritonSamplingParams.from_dict`, utils/
  vllm_backend_utils.py). Streamed responses carry the *new* text of each step in
  `text_output`, and the last one is flagged final and carries data.
- `create_response`: `finish_reason` is `str(output.finish_reason)` ("None" until finished,
  then "stop" / "length" / "abort"), `num_input_tokens` is `len(prompt_token_ids)` (after the
  engine expanded the image placeholders: image tokens count), `num_output_tokens` is the number
  of new tokens of this response.
"""

from __future__ import annotations

from autoglm.triton_models.contract import TensorSpec

TEXT_INPUT = TensorSpec("text_input", "TYPE_STRING", (1,))
# One element per image: the base64 (ASCII) text of a compressed image file.
IMAGE = TensorSpec("image", "TYPE_STRING", (-1,), optional=True)
STREAM = TensorSpec("stream", "TYPE_BOOL", (1,), optional=True)
SAMPLING_PARAMETERS = TensorSpec("sampling_parameters", "TYPE_STRING", (1,), optional=True)
EXCLUDE_INPUT_IN_OUTPUT = TensorSpec("exclude_input_in_output", "TYPE_BOOL", (1,), optional=True)
RETURN_FINISH_REASON = TensorSpec("return_finish_reason", "TYPE_BOOL", (1,), optional=True)
RETURN_CUMULATIVE_LOGPROB = TensorSpec(
    "return_cumulative_logprob", "TYPE_BOOL", (1,), optional=True
)
RETURN_LOGPROBS = TensorSpec("return_logprobs", "TYPE_BOOL", (1,), optional=True)
RETURN_NUM_INPUT_TOKENS = TensorSpec("return_num_input_tokens", "TYPE_BOOL", (1,), optional=True)
RETURN_NUM_OUTPUT_TOKENS = TensorSpec("return_num_output_tokens", "TYPE_BOOL", (1,), optional=True)

# In the backend's order. (Its `embedding_request` input serves the embed task, not used here.)
INPUTS: tuple[TensorSpec, ...] = (
    TEXT_INPUT,
    IMAGE,
    STREAM,
    SAMPLING_PARAMETERS,
    EXCLUDE_INPUT_IN_OUTPUT,
    RETURN_FINISH_REASON,
    RETURN_CUMULATIVE_LOGPROB,
    RETURN_LOGPROBS,
    RETURN_NUM_INPUT_TOKENS,
    RETURN_NUM_OUTPUT_TOKENS,
)

TEXT_OUTPUT = TensorSpec("text_output", "TYPE_STRING", (-1,))
FINISH_REASON = TensorSpec("finish_reason", "TYPE_STRING", (-1,))
CUMULATIVE_LOGPROB = TensorSpec("cumulative_logprob", "TYPE_FP32", (-1,))
# JSON per output: a list, one entry per new token, of {token_id: {logprob, rank, decoded_token}}.
LOGPROBS = TensorSpec("logprobs", "TYPE_STRING", (-1,))
NUM_INPUT_TOKENS = TensorSpec("num_input_tokens", "TYPE_UINT32", (1,))
NUM_OUTPUT_TOKENS = TensorSpec("num_output_tokens", "TYPE_UINT32", (-1,))

OUTPUTS: tuple[TensorSpec, ...] = (
    TEXT_OUTPUT,
    FINISH_REASON,
    CUMULATIVE_LOGPROB,
    LOGPROBS,
    NUM_INPUT_TOKENS,
    NUM_OUTPUT_TOKENS,
)

INPUTS_BY_NAME = {t.name: t for t in INPUTS}
OUTPUTS_BY_NAME = {t.name: t for t in OUTPUTS}

# vLLM's `CompletionOutput.finish_reason` values (vllm/outputs.py; "abort" when the request was
# aborted). "None" is how `str(None)` reaches the wire before the end.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"
FINISH_NONE = "None"

# The `sampling_parameters` keys the façade sends (vLLM `SamplingParams` field names, vllm/
# sampling_params.py); the CPU reference engine accepts exactly these and refuses any other, so a
# façade that starts sending a new one is caught by the CPU tests.
SAMPLING_KEYS: frozenset[str] = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "repetition_penalty",
        "frequency_penalty",
        "presence_penalty",
        "stop",
        "stop_token_ids",
        "skip_special_tokens",
        "logprobs",
    }
)

# What the façade sends (server/engine/text_request.py; return_logprobs only when asked) and
# reads: a served model must declare these (server/engine/contract_check.py, at start).
SENT_BY_FACADE: tuple[TensorSpec, ...] = (
    TEXT_INPUT,
    IMAGE,
    STREAM,
    SAMPLING_PARAMETERS,
    EXCLUDE_INPUT_IN_OUTPUT,
    RETURN_FINISH_REASON,
    RETURN_LOGPROBS,
    RETURN_NUM_INPUT_TOKENS,
    RETURN_NUM_OUTPUT_TOKENS,
)
READ_BY_FACADE: tuple[TensorSpec, ...] = (
    TEXT_OUTPUT,
    FINISH_REASON,
    LOGPROBS,
    NUM_INPUT_TOKENS,
    NUM_OUTPUT_TOKENS,
)
