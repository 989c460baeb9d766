"""Shared by the load and overload tests: a real Triton hosting the synthetic engine (and, when
asked, the real CPU model) and the real façade as a SUBPROCESS (`autoglm serve`, mTLS + bearer
token + tracing), started by the bench harness's BenchStack — a subprocess so that its memory
(/proc/<pid>/status) and CPU are its own, not the test runner's.

The synthetic engine streams its id cycle from position `seed mod len(cycle)` for
`request_output_len` ids (triton_models/synthetic.py), so every stream's exact output is known
in advance. `expected_ids` recomputes it here from that rule, independently of the engine code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from autoglm.bench.stack import BenchStack, StackOptions
from autoglm.client import ClientConfig
from autoglm.server.security.limits import LimitSettings

from .conftest import scrape

# English, CJK, emoji (4-byte UTF-8, split over several byte-level tokens) and a ZWJ sequence:
# a stream may start or end inside a character, which the façade's incremental detokenizer must
# hold back and release exactly as a full decode would.
CYCLE_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. 北京是中国的首都，上海是最大的城市。 "
    "Emoji: 🚀🔥 family 👩‍👩‍👧 and café, naïve, Ωμέγα. 12345 + 678 = 13023. "
)
_METRICS = re.compile(r"metrics on (http://[0-9.]+:\d+/metrics)")


def cycle_ids(tokenizer: Tokenizer) -> list[int]:
    """The synthetic engine's cycle: CYCLE_TEXT tokenized (no special tokens)."""
    return tokenizer.encode(CYCLE_TEXT, add_special_tokens=False).ids


def expected_ids(cycle: Sequence[int], end_id: int, seed: int, count: int) -> list[int]:
    """What the synthetic engine must stream for (seed, max_tokens): `count` ids of the cycle
    without `end_id`, from position seed mod its length, wrapping."""
    usable = [t for t in cycle if t != end_id]
    return [usable[(seed + k) % len(usable)] for k in range(count)]


class FacadeStack(BenchStack):
    """BenchStack with the façade's admission limits set (BenchStack lifts them all) and its
    deep-health probes off after the first check: a probe is a one-token generation, which
    would add to the Triton request counts the tests compare exactly."""

    def __init__(self, opts: StackOptions, limits: LimitSettings | None = None) -> None:
        super().__init__(opts)
        self.limits = limits

    def facade_command(self) -> list[str]:
        cmd = [*super().facade_command(), "--health-interval", "3600"]
        if self.limits is not None:
            for flag, value in (
                ("--max-in-flight", self.limits.max_in_flight),
                ("--max-streams-per-principal", self.limits.max_streams_per_principal),
                ("--requests-per-minute", self.limits.requests_per_minute),
                ("--max-tokens-per-request", self.limits.max_tokens_per_request),
            ):
                if flag in cmd:
                    cmd[cmd.index(flag) + 1] = str(value)
                else:
                    cmd += [flag, str(value)]
        return cmd

    @property
    def metrics_url(self) -> str:
        """The façade's /metrics (bound to a free port; the façade logs where)."""
        m = _METRICS.search(self.facade_log.read_text(errors="replace"))
        assert m, "the façade did not log its metrics address"
        return m.group(1)

    def client_config(self, model: str) -> ClientConfig:
        return ClientConfig(
            endpoint=self.facade_endpoint,
            ca_cert=self.pki.ca_cert,
            client_cert=self.pki.client_cert,
            client_key=self.pki.client_key,
            token=self.token,
            model=model,
        )

    def facade_rss_bytes(self) -> int:
        return proc_status_bytes(self.facade_pid, "VmRSS")

    def triton_metric(self, name: str, model: str) -> float:
        assert self.triton is not None
        return scrape(self.triton.metrics_url, name, model=model)

    def facade_metric(self, name: str, **labels: str) -> float:
        return scrape(self.metrics_url, name, **labels)


def proc_status_bytes(pid: int, field: str) -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM, …) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until predicate() held; AssertionError after timeout_s."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


@dataclass(frozen=True)
class StreamResult:
    """What one streamed call returned, as the client saw it."""

    index: int
    text: str
    token_ids: list[int]
    request_ids: set[str]
    finish_reasons: list[str | None]  # one per delta (only the last may be set)
    prompt_tokens: int | None
    completion_tokens: int | None
    error: BaseException | None = None
    seconds: float = 0.0
