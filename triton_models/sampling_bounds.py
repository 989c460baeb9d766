"""Numeric bounds of the sampling tensors, shared by the façade's validation and the CPU engine.

Both sides divide the logits by `temperature` and (for tokens already seen) by
`repetition_penalty`, so a divisor near zero turns finite logits into inf and the softmax into
NaN ("probability tensor contains either `inf`, `nan` or element < 0" from torch.multinomial).
Peers check only the sign: vLLM `repetition_penalty > 0` (`SamplingParams._verify_args`),
Hugging Face "`penalty` has to be a strictly positive float" (`RepetitionPenaltyLogitsProcessor`),
TensorRT-LLM `TLLM_CHECK(repetitionpenalty > 0.f)` and `temperature >= 0.f`
(`executor/samplingConfig.cpp`). The bounds below keep every divisor away from zero.
"""

from __future__ import annotations

import struct

# A temperature below this is greedy: vLLM's `_SAMPLING_EPS = 1e-5` ("Zero temperature means
# greedy sampling" when `temperature < _SAMPLING_EPS`, vllm/sampling_params.py). Dividing by it
# scales logits by at most 1e5, which float32 logits (|x| < 3.4e38) survive unless |x| > 3.4e33.
GREEDY_TEMPERATURE_BELOW = 1e-5

# The smallest repetition penalty accepted: 0.01, the floor vLLM puts under a non-zero
# temperature for the same division (`_MAX_TEMP = 1e-2`, raised to it "which may cause numerical
# errors nan or inf in tensors", vllm/sampling_params.py). A penalty of 0.01 multiplies a seen
# token's positive logit by 100 — already "always repeat" — so nothing useful lies below it.
MIN_REPETITION_PENALTY = 0.01
# The bound as a proto `float` or an FP32 tensor carries it (0.0099999998): a caller's 0.01
# arrives as this value and must pass. Compare with this one; name MIN_REPETITION_PENALTY.
MIN_REPETITION_PENALTY_F32 = struct.unpack("<f", struct.pack("<f", MIN_REPETITION_PENALTY))[0]

# The range the façade accepts for the additive presence and frequency penalties: OpenAI's
# ("Number between -2.0 and 2.0", API reference for chat completions) and vLLM's
# (`SamplingParams._verify_args`: "presence_penalty must be in [-2, 2]", the same for
# frequency_penalty). TensorRT-LLM takes any float ("(-inf, +inf)", docs/source/advanced/
# gpt-runtime.md), and so does the CPU engine, as long as the result stays finite. 2.0 is exact
# in float32, so a caller's 2.0 arrives as 2.0.
MAX_ABS_PENALTY = 2.0
