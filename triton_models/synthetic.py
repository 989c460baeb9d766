"""The SYNTHETIC engine (a benchmark tool, not a model): render it, and its pure logic.

`autoglm bench` serves this model to measure the serving path (Triton ↔ façade ↔ client)
without model compute dominating. It implements the engine tensor contract (contract.py) and
streams a fixed cycle of real vocabulary ids, so the façade's detokenizer does real work, at a
fixed per-stream pace like one sequence of a GPU batch (`tokens_per_second`, 0 = unpaced).
Each stream starts at position `seed mod len(cycle)` and is `request_output_len` ids long, so
its output is fully determined by the request and differs between requests: load tests can
tell streams apart and check every token (tests/integration/test_load_integrity.py).
The Triton adapter is templates/synthetic/1/model.py; the logic below is tested without Triton.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoglm.triton_models.render import TEMPLATES, check_model_name, render_config

if TYPE_CHECKING:  # imported where a config is validated (render.config_proto)
    from tritonclient.grpc import model_config_pb2


def parse_token_ids(text: str) -> tuple[int, ...]:
    """The `token_ids` parameter ("12,345,6") as ids; ValueError when empty or negative."""
    ids = tuple(int(t) for t in text.split(",") if t.strip())
    if not ids or any(t < 0 for t in ids):
        raise ValueError(f"token_ids: need non-negative ids, got {text!r}")
    return ids


def synthetic_ids(
    cycle: Sequence[int], count: int, end_id: int | None, start: int = 0
) -> Iterator[int]:
    """`count` ids taken round-robin from `cycle` without `end_id` (which would stop early),
    beginning at position `start` (any non-negative int, e.g. the request's seed; wraps)."""
    usable = [t for t in cycle if t != end_id]
    if not usable:
        raise ValueError("token_ids: every id equals end_id")
    if start < 0:
        raise ValueError(f"start: must be >= 0, got {start}")
    offset = start % len(usable)
    for i in range(count):
        yield usable[(offset + i) % len(usable)]


@dataclass(frozen=True, slots=True)
class Pacer:
    """Token i of a stream is due at start + (i + 1) / tokens_per_second (absolute, no drift)."""

    tokens_per_second: float
    start: float

    def delay(self, index: int, now: float) -> float:
        """Seconds to wait before emitting token `index` (0 when unpaced or late)."""
        if self.tokens_per_second <= 0:
            return 0.0
        return max(0.0, self.start + (index + 1) / self.tokens_per_second - now)


class CancellationCheck:
    """When to ask Triton whether a stream was cancelled: before its first token, then at most
    every `period_s` (0 = before every token).

    The tensorrtllm backend checks its active requests every `cancellation_check_period_ms`
    (default 100; tensorrtllm_backend's config.pbtxt, rendered here by tensorrt_llm.py), so the
    synthetic engine does the same. In the python backend every `is_cancelled()` is a round trip
    between the model's stub process and Triton, as costly as sending a response; checking per
    token billed that to the engine on every token of both benchmark paths.
    """

    __slots__ = ("_next", "period_s")

    def __init__(self, period_s: float) -> None:
        if period_s < 0:
            raise ValueError(f"cancellation_check_period_ms: must be >= 0, got {period_s * 1e3:g}")
        self.period_s = period_s
        self._next: float | None = None

    def due(self, now: float) -> bool:
        """True when a check is due at `now` (monotonic seconds); the next is then scheduled."""
        if self._next is not None and now < self._next:
            return False
        self._next = now + self.period_s
        return True


def render_synthetic_model(
    repo: Path,
    name: str,
    tokens_per_second: float,
    instance_count: int = 1,
    *,
    token_ids: Sequence[int],
    max_concurrency: int = 256,
    max_batch_size: int = 8,
    version: int = 1,
    cancellation_check_period_ms: int = 100,
) -> model_config_pb2.ModelConfig:
    """Write `<repo>/<name>/` for the synthetic engine; returns the parsed config."""
    check_model_name(name)
    if tokens_per_second < 0:
        raise ValueError(f"tokens_per_second: must be >= 0, got {tokens_per_second}")
    if cancellation_check_period_ms < 0:
        raise ValueError(
            f"cancellation_check_period_ms: must be >= 0, got {cancellation_check_period_ms}"
        )
    for field, value in (
        ("instance_count", instance_count),
        ("max_concurrency", max_concurrency),
        ("max_batch_size", max_batch_size),
        ("version", version),
    ):
        if value < 1:
            raise ValueError(f"{field}: must be >= 1, got {value}")
    ids = ",".join(str(int(t)) for t in token_ids)
    parse_token_ids(ids)  # same check as the model's, before Triton sees it
    src = TEMPLATES / "synthetic"
    text, parsed = render_config(
        src / "config.pbtxt",
        {
            "model_name": name,
            "max_batch_size": max_batch_size,
            "instance_count": instance_count,
            "tokens_per_second": tokens_per_second,
            "token_ids": ids,
            "max_concurrency": max_concurrency,
            "cancellation_check_period_ms": int(cancellation_check_period_ms),
        },
    )
    model_root = repo / name
    version_dir = model_root / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "1" / "model.py", version_dir / "model.py")
    tmp = model_root / "config.pbtxt.tmp"
    tmp.write_text(text)
    tmp.replace(model_root / "config.pbtxt")
    return parsed
