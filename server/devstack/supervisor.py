"""When `autoglm dev` restarts its Triton, and when it gives up: the decisions alone, no I/O.

`supervised_triton.py` watches the process and acts; this module only answers "Triton exited
(or failed to start) now: restart after how long, or give up?", so the schedule can be tested
in microseconds.

The rules are systemd's and Kubernetes' (a container's restart policy): restart at once-ish,
back off exponentially while it keeps failing, cap the delay, forget the failures after a run
that stayed up long enough, and stop trying after a burst of fast failures instead of looping
for ever (systemd `StartLimitBurst`; Kubernetes CrashLoopBackOff never gives up, but a dev
command that loops silently hides a broken model, so this one exits non-zero and says why).
"""

from __future__ import annotations

import enum
import re
import signal
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Defaults: 0.5, 1, 2, 4, 8, 10 s between the attempts of a crash loop, then give up at the
    7th failure in a row (~25 s of back-off plus seven start attempts); a run that stayed up 60 s
    wipes the slate. The first delay is short because a dev user waits for it: a start of the
    real model takes seconds anyway, and a loop is what the back-off is for."""

    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 10.0
    stable_after_s: float = 60.0
    max_failures: int = 7  # failures in a row (none separated by a stable run) before giving up

    def __post_init__(self) -> None:
        for name, value in (
            ("first_delay_s", self.first_delay_s),
            ("max_delay_s", self.max_delay_s),
            ("stable_after_s", self.stable_after_s),
        ):
            if value < 0:
                raise ValueError(f"RestartPolicy.{name}: must be >= 0, got {value}")
        if self.factor < 1:
            raise ValueError(f"RestartPolicy.factor: must be >= 1, got {self.factor}")
        if self.max_failures < 1:
            raise ValueError(f"RestartPolicy.max_failures: must be >= 1, got {self.max_failures}")

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows the `failures`-th failure in a row."""
        if failures < 1:
            raise ValueError(f"delay: failures must be >= 1, got {failures}")
        # min() before the power would overflow for a long loop; the exponent is small anyway.
        return min(self.max_delay_s, self.first_delay_s * self.factor ** min(failures - 1, 64))


class Phase(enum.Enum):
    RUNNING = "running"  # ready, watched
    WAITING = "waiting"  # exited; a restart is scheduled
    STARTING = "starting"  # launched again, loading the model
    STOPPING = "stopping"  # shutdown asked: no restart from here on
    GAVE_UP = "gave up"


@dataclass(frozen=True, slots=True)
class Restart:
    delay_s: float
    attempt: int  # failures in a row so far (1 = the first since a stable run)


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


@dataclass(frozen=True, slots=True)
class Ignore:
    """An exit during shutdown: expected, nothing to do."""


Decision = Restart | GiveUp | Ignore


class Supervisor:
    """The state of one supervised process; feed it events with their monotonic times."""

    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.phase = Phase.STARTING
        self.failures = 0  # in a row, not separated by a stable run
        self.up_since: float | None = None  # when the current run became ready

    def ready(self, now: float) -> None:
        """The (re)started process answers: it runs from `now`."""
        if self.phase in (Phase.STOPPING, Phase.GAVE_UP):
            return
        self.phase = Phase.RUNNING
        self.up_since = now

    def restarting(self) -> bool:
        """The back-off is over: launch again? (False once shutdown or give-up has come.)"""
        if self.phase is not Phase.WAITING:
            return False
        self.phase = Phase.STARTING
        return True

    def exited(self, now: float, how: str) -> Decision:
        """The running process exited (`how`: `describe_exit`)."""
        if self.phase in (Phase.STOPPING, Phase.GAVE_UP):
            return Ignore()
        if self.up_since is not None and now - self.up_since >= self.policy.stable_after_s:
            self.failures = 0  # it had been up long enough: a new incident, not a loop
        return self._failed(f"Triton {how}")

    def start_failed(self, now: float, why: str) -> Decision:
        """A restart did not come up (exited during start-up, or not ready in time)."""
        if self.phase in (Phase.STOPPING, Phase.GAVE_UP):
            return Ignore()
        return self._failed(why)

    def stop(self) -> None:
        """Shutdown: whatever exits from now on is not restarted."""
        if self.phase is not Phase.GAVE_UP:
            self.phase = Phase.STOPPING

    def _failed(self, what: str) -> Decision:
        self.up_since = None
        self.failures += 1
        if self.failures >= self.policy.max_failures:
            self.phase = Phase.GAVE_UP
            return GiveUp(
                f"{what}; {self.failures} failures in a row, none of them after a run of"
                f" {self.policy.stable_after_s:g} s or more: giving up"
            )
        self.phase = Phase.WAITING
        return Restart(self.policy.delay(self.failures), self.failures)


def describe_exit(returncode: int) -> str:
    """A Popen return code in words: "exited (signal 9, SIGKILL)", "exited (code 1)"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"exited (signal {-returncode})"
        return f"exited (signal {-returncode}, {name})"
    return f"exited (code {returncode})"


# Triton's glog error lines ("E1206 17:06:46.661227 27401 file.cc:1415] \"message\"") and its
# final "error: creating server: …" line.
_ERROR_LINE = re.compile(r'^E\d{4} [\d:.]+ +\d+ [^\]]*\] "?(?P<glog>.*?)"?$|^(?P<plain>error: .*)$')
# Logged at every start of Triton 2.51 on a host without a CUDA driver: never the cause.
_NOISE = ("CudaDriverHelper has not been initialized",)


def triton_errors(log_tail: str, limit: int = 3) -> list[str]:
    """The last `limit` distinct error messages in the tail of a Triton log, without glog's
    prefix, latest last. Triton's closing "error: creating server: …" only when no glog error
    line names a cause ("failed to load all models" says nothing about why)."""
    causes: list[str] = []
    summaries: list[str] = []
    for line in log_tail.splitlines():
        m = _ERROR_LINE.match(line.strip())
        if m is None or any(noise in line for noise in _NOISE):
            continue
        found, into = (
            (m.group("glog"), causes)
            if m.group("glog") is not None
            else (m.group("plain"), summaries)
        )
        if found in into:
            into.remove(found)
        into.append(found)
    return (causes or summaries)[-limit:]
