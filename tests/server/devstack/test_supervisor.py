"""`autoglm dev`'s Triton supervision: the restart schedule and give-up rule (supervisor.py),
the exit watch of TritonProcess (a pidfd, no polling), and SupervisedTriton's restart and
give-up paths with a stand-in process. Real Triton killed under load:
tests/integration/test_dev_supervision.py."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm.server.devstack.supervised_triton import SupervisedTriton
from autoglm.server.devstack.supervisor import (
    GiveUp,
    Ignore,
    Phase,
    Restart,
    RestartPolicy,
    Supervisor,
    describe_exit,
    triton_errors,
)
from autoglm.server.devstack.triton_process import (
    TritonOptions,
    TritonProcess,
    TritonStartError,
)

# ---- the schedule ---------------------------------------------------------------------------


def test_delays_double_from_the_first_and_stop_at_the_cap() -> None:
    policy = RestartPolicy(first_delay_s=0.5, factor=2.0, max_delay_s=10.0)
    assert [policy.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert policy.delay(10_000) == 10.0  # no overflow in a very long loop


def test_the_default_loop_reaches_the_cap_before_giving_up() -> None:
    policy = RestartPolicy()
    delays = [policy.delay(n) for n in range(1, policy.max_failures)]
    assert delays[-1] == policy.max_delay_s  # the cap is a real limit, not a dead number
    assert sum(delays) < policy.stable_after_s  # a loop is seen as one, not as fresh crashes


@pytest.mark.parametrize(
    ("field", "value"),
    [("first_delay_s", -1.0), ("max_delay_s", -0.1), ("stable_after_s", -5.0),
     ("factor", 0.5), ("max_failures", 0)],
)  # fmt: skip
def test_bad_policies_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"RestartPolicy.{field}"):
        RestartPolicy(**{field: value})


def test_delay_needs_a_failure() -> None:
    with pytest.raises(ValueError, match="failures"):
        RestartPolicy().delay(0)


# ---- the state machine ----------------------------------------------------------------------

POLICY = RestartPolicy(first_delay_s=1.0, factor=2.0, max_delay_s=4.0, stable_after_s=60.0,
                       max_failures=4)  # fmt: skip


def _running(at: float = 0.0) -> Supervisor:
    sup = Supervisor(POLICY)
    sup.ready(at)
    return sup


def test_a_crash_after_a_stable_run_restarts_after_the_first_delay() -> None:
    sup = _running(at=0.0)
    assert sup.exited(100.0, "exited (signal 9, SIGKILL)") == Restart(1.0, 1)
    assert sup.phase is Phase.WAITING
    assert sup.restarting() and sup.phase is Phase.STARTING
    sup.ready(102.0)
    assert sup.phase is Phase.RUNNING and sup.up_since == 102.0


def test_fast_crashes_back_off_then_give_up_with_the_reason() -> None:
    sup = _running(at=0.0)
    now = 1.0
    decisions = []
    for _ in range(POLICY.max_failures):
        decision = sup.exited(now, "exited (code 1)")
        decisions.append(decision)
        if isinstance(decision, GiveUp):
            break
        assert sup.restarting()
        now += decision.delay_s + 5.0
        sup.ready(now)  # up again, then dies within seconds: a crash loop
        now += 3.0
    assert decisions[:-1] == [Restart(1.0, 1), Restart(2.0, 2), Restart(4.0, 3)]
    last = decisions[-1]
    assert isinstance(last, GiveUp)
    assert "Triton exited (code 1)" in last.reason and "4 failures in a row" in last.reason
    assert sup.phase is Phase.GAVE_UP
    assert not sup.restarting()
    assert sup.exited(now + 1, "exited (code 1)") == Ignore()


def test_a_stable_run_resets_the_back_off() -> None:
    sup = _running(at=0.0)
    assert sup.exited(1.0, "x") == Restart(1.0, 1)
    assert sup.restarting()
    sup.ready(3.0)
    assert sup.exited(4.0, "x") == Restart(2.0, 2)  # fast: the loop goes on
    assert sup.restarting()
    sup.ready(8.0)
    assert sup.exited(8.0 + POLICY.stable_after_s, "x") == Restart(1.0, 1)  # stable: fresh start


def test_failed_starts_count_as_failures_of_the_loop() -> None:
    sup = _running(at=0.0)
    assert sup.exited(10.0, "exited (signal 11, SIGSEGV)") == Restart(1.0, 1)
    assert sup.restarting()
    assert sup.start_failed(12.0, "Triton did not come back") == Restart(2.0, 2)
    assert sup.restarting()
    assert sup.start_failed(15.0, "Triton did not come back") == Restart(4.0, 3)
    assert sup.restarting()
    gave_up = sup.start_failed(20.0, "Triton did not come back (exited during start-up)")
    assert isinstance(gave_up, GiveUp) and "exited during start-up" in gave_up.reason


def test_nothing_is_restarted_during_shutdown() -> None:
    sup = _running()
    sup.stop()
    assert sup.exited(100.0, "exited (code 0)") == Ignore()
    assert sup.phase is Phase.STOPPING

    waiting = _running()
    assert isinstance(waiting.exited(100.0, "x"), Restart)
    waiting.stop()  # shutdown during the back-off
    assert not waiting.restarting()
    waiting.ready(101.0)  # a start that finished anyway changes nothing
    assert waiting.phase is Phase.STOPPING
    assert waiting.start_failed(102.0, "x") == Ignore()


@pytest.mark.parametrize(
    ("code", "words"),
    [(-9, "exited (signal 9, SIGKILL)"), (-11, "exited (signal 11, SIGSEGV)"),
     (0, "exited (code 0)"), (1, "exited (code 1)"), (-200, "exited (signal 200)")],
)  # fmt: skip
def test_exits_in_words(code: int, words: str) -> None:
    assert describe_exit(code) == words


# Lines of a real triton.log (Triton 2.51, CPU) whose model folder had gone.
FAILED_START_LOG = """\
I1206 17:06:46.660101 27401 model_lifecycle.cc:472] "loading: other:1"
E1206 17:06:46.661024 27401 server.cc:241] "CudaDriverHelper has not been initialized."
E1206 17:06:46.661227 27401 model_repository_manager.cc:1415] "failed to poll model 'smollm2-135m-instruct': model not found in any model repository."
| exit_timeout                     | 10 |
I1206 17:06:46.661509 27401 server.cc:305] "Waiting for in-flight requests to complete."
error: creating server: Internal - failed to load all models
"""  # noqa: E501


def test_triton_errors_name_the_cause_without_glog_prefix_or_noise() -> None:
    assert triton_errors(FAILED_START_LOG) == [
        "failed to poll model 'smollm2-135m-instruct': model not found in any model repository."
    ]
    twice = FAILED_START_LOG * 2  # two failed starts: one message, not two
    assert len(triton_errors(twice)) == 1


def test_triton_errors_fall_back_to_the_summary_then_to_nothing() -> None:
    summary_only = 'I1206 00:00:00.1 1 x.cc:1] "ok"\nerror: creating server: Invalid arg\n'
    assert triton_errors(summary_only) == ["error: creating server: Invalid arg"]
    assert triton_errors('I1206 00:00:00.1 1 x.cc:1] "started"\n') == []


# ---- TritonProcess.exited: the kernel says when, the process is reaped ----------------------


def _state(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except FileNotFoundError:
        return None
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and pidfd are Linux's")
async def test_exited_wakes_on_the_kill_and_reaps(tmp_path: Path) -> None:
    triton = TritonProcess(TritonOptions(model_repository=tmp_path, models=()))
    # A stand-in child (`exited` only waits for it); spawning does not block the loop for long.
    triton._proc = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220
    pid = triton._proc.pid
    waiter = asyncio.ensure_future(triton.exited())
    await asyncio.sleep(0)  # the watch is armed
    assert not waiter.done()
    killed = time.monotonic()
    triton._proc.send_signal(signal.SIGKILL)
    code = await asyncio.wait_for(waiter, 5)
    woke = time.monotonic() - killed
    assert code == -signal.SIGKILL
    assert _state(pid) is None  # reaped: no zombie
    assert woke < 1.0  # woken by the exit itself, not by a poll interval
    assert await triton.exited() == -signal.SIGKILL  # once exited, it answers at once


# ---- SupervisedTriton with a stand-in process -----------------------------------------------


class StandIn:
    """A real child process in Triton's place: `sleep` while "running", and a start that fails
    (exits at once) for the attempts listed in `failing_starts`."""

    def __init__(self, log_path: Path, failing_starts: set[int] | None = None) -> None:
        self.log_path = log_path
        self.failing_starts = failing_starts or set()
        self.launches = 0
        self.stops = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_at: float | None = None
        log_path.write_text("line 1\nthe last line of the log\n")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def launch(self) -> None:
        self.launches += 1
        fail = self.launches in self.failing_starts
        self.proc = subprocess.Popen(["sh", "-c", "exit 3"] if fail else ["sleep", "60"])

    def wait_ready(self) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(0.2)
        except subprocess.TimeoutExpired:
            return  # still up: "ready"
        raise TritonStartError("tritonserver exited during start-up:\n(log)")

    async def exited(self) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait)

    def stop(self, timeout: float | None = None) -> int | None:
        self.stops += 1
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode if self.proc else None


async def _until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


FAST = RestartPolicy(first_delay_s=0.01, factor=2.0, max_delay_s=0.04, max_failures=3)


async def test_a_killed_process_is_restarted_and_reported(tmp_path: Path) -> None:
    proc = StandIn(tmp_path / "triton.log")
    proc.launch()
    lines: list[str] = []
    serving = {"now": False}

    async def is_serving() -> bool:
        return serving["now"]

    sup = SupervisedTriton(proc, say=lines.append, policy=FAST, serving=is_serving)
    sup.watch()
    first = proc.pid
    assert first is not None
    proc.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    await _until(lambda: sup.restarts == 1)
    assert proc.launches == 2 and proc.pid != first and proc.stops >= 1
    assert lines[0].startswith(f"Triton (pid {first}) exited (signal 9, SIGKILL) after ")
    assert "; restarting in 0.01 s (attempt 1 of 2)" in lines[0]
    serving["now"] = True  # the façade's health readmits the engine
    await _until(lambda: len(lines) == 2)
    assert lines[1].startswith("Triton ready again after ") and "façade SERVING after" in lines[1]
    await sup.close()
    assert proc.launches == 2 and not sup.gave_up.done()
    proc.stop()


async def test_repeated_fast_failures_give_up_with_the_log_tail(tmp_path: Path) -> None:
    proc = StandIn(tmp_path / "triton.log", failing_starts={2, 3})
    proc.launch()
    lines: list[str] = []
    sup = SupervisedTriton(proc, say=lines.append, policy=FAST)
    sup.watch()
    proc.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    reason = await asyncio.wait_for(sup.gave_up, 10)
    assert proc.launches == 3  # the first start, then FAST.max_failures - 1 restarts
    assert "3 failures in a row" in reason and "giving up" in reason
    assert "Triton did not come back (tritonserver exited during start-up)" in reason
    assert lines[1].startswith("Triton did not come back") and "restarting in 0.02 s" in lines[1]
    assert "the last line of the log" in lines[-1] and "giving up" in lines[-1]
    await sup.close()


async def test_no_restart_after_close(tmp_path: Path) -> None:
    proc = StandIn(tmp_path / "triton.log")
    proc.launch()
    lines: list[str] = []
    sup = SupervisedTriton(proc, say=lines.append, policy=FAST)
    sup.watch()
    await sup.close()
    proc.stop()  # shutdown stops Triton after the supervisor was closed
    assert proc.launches == 1 and lines == []
