"""`autoglm dev`'s Triton kept alive: notice its exit at once, reap it, restart it with back-off.

The I/O half of supervision; the decisions (delays, when to give up) are supervisor.py's.
A restart is the same Triton as the first start (`TritonProcess.stop` then `launch`): same
model repository and `--load-model`, same ports and unix socket path, so the façade's channels
and its engine reader reconnect to the address they know, and its deep-health loop readmits the
engine on its own once the model answers (health.py). Nothing here talks to the façade except
to report when it says SERVING again.

In production none of this runs: Kubernetes restarts Triton's container (deploy/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from autoglm.server.devstack.supervisor import (
    Decision,
    GiveUp,
    Ignore,
    Restart,
    RestartPolicy,
    Supervisor,
    describe_exit,
    triton_errors,
)
from autoglm.server.devstack.triton_process import TritonStartError

log = logging.getLogger("autoglm.dev.supervisor")

# How long to wait for the façade's health to say SERVING after Triton is back before saying
# so anyway: two deep-health rounds (2 s each by default) plus a probe's deadline (5 s).
SERVING_WAIT_S = 15.0


class Restartable(Protocol):
    """What is supervised: TritonProcess (tests/server/devstack: a stand-in process)."""

    @property
    def pid(self) -> int | None: ...
    @property
    def ready_at(self) -> float | None: ...  # time.monotonic() of its last ready answer
    @property
    def log_path(self) -> Path: ...
    def log_tail(self, lines: int = 40) -> str: ...
    def launch(self) -> None: ...
    def wait_ready(self) -> None: ...
    async def exited(self) -> int: ...
    def stop(self, timeout: float | None = None) -> int | None: ...


class SupervisedTriton:
    """Watches a started TritonProcess; restarts it when it exits until `close` or give-up."""

    def __init__(
        self,
        triton: Restartable,
        *,
        say: Callable[[str], None],
        policy: RestartPolicy | None = None,
        serving: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`say`: a line for the console. `serving`: whether the façade says SERVING now."""
        self.triton = triton
        self._say = say
        self._serving = serving
        self._supervisor = Supervisor(policy)
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0
        # Resolves with the reason when the policy gives up (the dev command then exits 1).
        self.gave_up: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def watch(self) -> None:
        """Start watching; call once Triton has started and its model is ready."""
        ready_at = self.triton.ready_at
        self._supervisor.ready(time.monotonic() if ready_at is None else ready_at)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """No restart from now on; stop watching (Triton itself is left to `TritonProcess.stop`).

        A restart under way is abandoned: its start-up thread ends when Triton is stopped."""
        self._supervisor.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        report: asyncio.Task[None] | None = None
        try:
            while True:
                pid = self.triton.pid
                code = await self.triton.exited()  # reaped: no zombie left
                if report is not None:
                    report.cancel()  # it died again before the façade said SERVING
                report = await self._handle_exit(pid, code)
                if report is None:
                    return
        finally:
            if report is not None:
                report.cancel()

    async def _handle_exit(self, pid: int | None, code: int) -> asyncio.Task[None] | None:
        """Restart after an exit; the task reporting the façade's return, or None when done."""
        exited_at = time.monotonic()
        up_since = self._supervisor.up_since
        decision = self._supervisor.exited(exited_at, describe_exit(code))
        if isinstance(decision, Ignore):
            return None
        ran = f" after {exited_at - up_since:.1f} s up" if up_since is not None else ""
        what = f"Triton (pid {pid}) {describe_exit(code)}{ran}"
        log.warning("%s", what)
        # Its python-backend stubs survive it in its process group; its shared memory and
        # socket file stay behind: cleared before anything starts again.
        await asyncio.to_thread(self.triton.stop)
        ready_at = await self._recover(decision, what)
        if ready_at is None:
            return None
        # Reported aside, so that the watch is back on the new Triton at once.
        return asyncio.get_running_loop().create_task(self._report_back(exited_at, ready_at))

    async def _recover(self, decision: Decision, what: str) -> float | None:
        """Restart until Triton is ready again (then: when, in time.monotonic()) or until the
        policy gives up or shutdown comes (None)."""
        while True:
            if isinstance(decision, Ignore):
                return None
            if isinstance(decision, GiveUp):
                errors = triton_errors(self.triton.log_tail(80))
                shown = "\n".join(f"  {e}" for e in errors) or self.triton.log_tail(15)
                self._say(f"{decision.reason}. Triton's log ({self.triton.log_path}):\n{shown}")
                log.error("%s", decision.reason)
                if not self.gave_up.done():
                    self.gave_up.set_result(decision.reason)
                return None
            assert isinstance(decision, Restart)
            self._say(
                f"{what}; restarting in {decision.delay_s:g} s"
                f" (attempt {decision.attempt} of {self._supervisor.policy.max_failures - 1})"
            )
            await asyncio.sleep(decision.delay_s)
            if not self._supervisor.restarting():
                return None
            try:
                # On this (the event loop's, the main) thread: Triton's PR_SET_PDEATHSIG is tied
                # to the thread that forks it (TritonProcess.launch). Spawning takes milliseconds.
                self.triton.launch()
                await asyncio.to_thread(self.triton.wait_ready)
            except (TritonStartError, OSError) as exc:
                await asyncio.to_thread(self.triton.stop)
                # "tritonserver exited during start-up" and the error Triton logged last.
                first = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
                errors = triton_errors(self.triton.log_tail(80), limit=1)
                what = f"Triton did not come back ({': '.join([first, *errors])})"
                decision = self._supervisor.start_failed(time.monotonic(), what)
                continue
            ready_at = self.triton.ready_at or time.monotonic()
            self._supervisor.ready(ready_at)
            self.restarts += 1
            log.info("Triton ready again (pid %s)", self.triton.pid)
            return ready_at

    async def _report_back(self, exited_at: float, ready_at: float) -> None:
        back = f"Triton ready again after {ready_at - exited_at:.1f} s (pid {self.triton.pid})"
        if self._serving is None:
            self._say(back)
            return
        deadline = ready_at + SERVING_WAIT_S
        # The deep-health loop readmits the engine at its next round (health.py): a 0.1 s poll of
        # the façade's own status, as `_wait_serving` at start-up does.
        while not await self._serving():
            if time.monotonic() >= deadline:
                self._say(f"{back}; façade not SERVING after {SERVING_WAIT_S:g} s (see its log)")
                return
            await asyncio.sleep(0.1)
        self._say(f"{back}; façade SERVING after {time.monotonic() - exited_at:.1f} s")
