"""Random GenerateRequests for the fuzz (test_fuzz.py), and what the API contract says of each.

`random_request` draws every field of autoglm.v1's GenerateRequest; every numeric field draws
from its type's extremes (denormals, ±inf, NaN, -0.0, float32 limits; 0, -1, the int32 limits;
0, 2**63-1, 2**64-1 for the uint64 seed), from random bit patterns and from its valid range.
"Hostile" requests draw everything that way; "plausible" ones keep the request's shape valid
and draw the sampling numbers from their valid extremes, so that many reach the engine with
numbers like temperature 1e-45 or seed 2**64-1 (the engine is where such numbers once failed).

`contract_violations` is an independent oracle: the fields the proto's documented ranges
(proto/autoglm/v1/text_generation.proto) say are wrong, computed here without the façade's
validation code, so the fuzz also checks that validation implements what the API promises.
"""

from __future__ import annotations

import math
import random
import re
import struct
from dataclasses import dataclass

import numpy as np

from autoglm.v1 import text_generation_pb2 as pb

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32
FLOAT_EXTREMES = (
    0.0, -0.0, 5e-324, 1e-45, F32_TINY, 9.99e-6, 1e-5, 0.0099, 0.01, 0.5, 1.0, 2.0,
    2.0000002, F32_MAX, 1e39, math.inf, -math.inf, math.nan, -1e-45, -1.0, -F32_MAX,
)  # fmt: skip
INT32_EXTREMES = (0, -1, 1, 2**31 - 1, -(2**31))
UINT64_EXTREMES = (0, 1, 2**63 - 1, 2**64 - 1)

# The documented ranges (text_generation.proto), compared as the float32 the proto carries.
MAX_OUTPUT_TOKENS = 4096  # ModelInfo.max_output_tokens of the fuzzed models (model_limits.py)
MIN_PENALTY = float(np.float32(0.01))
MAX_PROMPT_BYTES = 1 << 20
MAX_MESSAGES = 256
MAX_STOPS = 8
MAX_STOP_BYTES = 128
ROLES = ("system", "user", "assistant")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Text a caller can send: ASCII, controls and NUL, accents, CJK, emoji (4-byte UTF-8), RTL and
# zero-width marks — any valid UTF-8 (proto3 strings must be), so no lone surrogates.
_ALPHABET = (
    "abcXYZ 019 .,:;!?-_\n\t\r\x00\x07\x1b\x7fé ñ ü ß 北京 東京 한국 🙂👍🚀 👩‍👩‍👧 "
    "\u200b\u200d\u202e\ufeff\ufffd"
)


@dataclass(frozen=True)
class Target:
    """The model the fuzz serves and the budgets an accepted request may ask for."""

    model: str
    budgets: tuple[int, ...]  # valid max_tokens values, most of them small


def _text(rng: random.Random, max_len: int) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, max_len)))


def _random_f32(rng: random.Random) -> float:
    """A random float32 bit pattern: any sign, exponent (denormals, inf, NaN) and mantissa."""
    return struct.unpack("<f", rng.getrandbits(32).to_bytes(4, "little"))[0]


def _float(rng: random.Random, hostile: bool, valid: tuple[float, ...], lo: float, hi: float):
    """A float field's value, or None to leave it unset."""
    r = rng.random()
    if r < 0.3:
        return None
    if hostile:
        if r < 0.7:
            return rng.choice(FLOAT_EXTREMES)
        return _random_f32(rng) if r < 0.85 else rng.uniform(lo - 1.0, hi + 1.0)
    return rng.choice(valid) if r < 0.65 else rng.uniform(lo, hi)


def _int(rng: random.Random, hostile: bool, extremes: tuple[int, ...], valid: tuple[int, ...]):
    r = rng.random()
    if r < 0.3:
        return None
    if hostile and r < 0.8:
        return rng.choice(extremes)
    return rng.choice(valid)


def _max_tokens(rng: random.Random, hostile: bool, target: Target) -> int:
    if hostile and rng.random() < 0.5:
        return rng.choice(
            (
                *INT32_EXTREMES,
                MAX_OUTPUT_TOKENS + 1,
                rng.randint(-(2**31), -1),
                rng.randint(MAX_OUTPUT_TOKENS + 1, 2**31 - 1),
            )
        )
    return rng.choice(target.budgets)


def random_request(rng: random.Random, target: Target) -> pb.GenerateRequest:
    hostile = rng.random() < 0.6
    s = pb.SamplingParams(max_tokens=_max_tokens(rng, hostile, target))
    temperature = _float(rng, hostile, (0.0, -0.0, 5e-324, 1e-45, F32_TINY, 9.99e-6, 2.0), 0, 2)
    if temperature is not None:
        s.temperature = temperature
    top_p = _float(rng, hostile, (1e-45, F32_TINY, 1e-6, 1.0), 1e-6, 1.0)
    if top_p is not None:
        s.top_p = top_p
    top_k = _int(rng, hostile, INT32_EXTREMES, (0, 1, 2, 40, 1000))
    if top_k is not None:
        s.top_k = top_k
    seed = _int(rng, hostile, UINT64_EXTREMES, UINT64_EXTREMES)
    if seed is not None:
        s.seed = seed
    penalty = _float(rng, hostile, (MIN_PENALTY, 0.5, 1.0, 2.0), MIN_PENALTY, 2.0)
    if penalty is not None:
        s.repetition_penalty = penalty
    if hostile:
        s.stop.extend(_text(rng, 150) for _ in range(rng.choice((0, 0, 1, 3, 9))))
    elif rng.random() < 0.3:
        s.stop.extend(_text(rng, 8) or "." for _ in range(rng.randint(1, 3)))
    req = pb.GenerateRequest(sampling=s)
    if hostile:
        req.model = rng.choice(
            (target.model, target.model, target.model, "", "no-such", _text(rng, 20))
        )
        req.request_id = rng.choice(("", "req-1", "x" * 65, "a b", _text(rng, 70)))
        if rng.random() < 0.6:
            req.prompt = _text(rng, 40)
        for _ in range(rng.choice((0, 0, 1, 2, 3))):
            role = rng.choice((*ROLES, "", "tool", _text(rng, 6)))
            req.messages.add(role=role, content=_text(rng, 40))
    else:
        req.model = target.model
        req.request_id = rng.choice(("", f"fuzz-{rng.getrandbits(32):x}"))
        if rng.random() < 0.5:
            req.prompt = _text(rng, 30) or "Hi"
        else:
            req.messages.add(role="user", content=_text(rng, 30) or "Hi")
    return req


def contract_violations(req: pb.GenerateRequest) -> set[str]:
    """The fields the API contract says are invalid, whatever the model (validation's part)."""
    bad: set[str] = set()
    if req.request_id and not _REQUEST_ID.fullmatch(req.request_id):
        bad.add("request_id")
    if not req.model:
        bad.add("model")
    if (bool(req.prompt) == bool(req.messages)) or len(req.prompt.encode()) > MAX_PROMPT_BYTES:
        bad.add("prompt")
    if len(req.messages) > MAX_MESSAGES or (
        sum(len(m.content.encode()) for m in req.messages) > MAX_PROMPT_BYTES
    ):
        bad.add("messages")
    bad.update(f"messages[{i}].role" for i, m in enumerate(req.messages) if m.role not in ROLES)
    s = req.sampling
    checks = {
        "max_tokens": s.max_tokens >= 0,
        "temperature": not s.HasField("temperature") or 0.0 <= s.temperature <= 2.0,
        "top_p": not s.HasField("top_p") or 0.0 < s.top_p <= 1.0,
        "top_k": not s.HasField("top_k") or 0 <= s.top_k <= 1000,
        "repetition_penalty": not s.HasField("repetition_penalty")
        or MIN_PENALTY <= s.repetition_penalty <= 2.0,  # NaN fails every comparison
        "stop": len(s.stop) <= MAX_STOPS,
    }
    bad.update(f"sampling.{name}" for name, ok in checks.items() if not ok)
    bad.update(
        f"sampling.stop[{i}]"
        for i, stop in enumerate(s.stop)
        if not 1 <= len(stop.encode()) <= MAX_STOP_BYTES
    )
    return bad
