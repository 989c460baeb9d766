"""`autoglm serve --workers N`: N façade processes accepting on one port (SO_REUSEPORT).

One Python process relays at most ~one core's worth of tokens (the GIL; grpc.aio runs the event
loop on one thread), so scale-out is by processes: every worker is a complete façade (own event
loop, Triton channel, metrics, tracing) and the kernel spreads new connections over them
(SO_REUSEPORT hashes each connection to one listening socket). Each worker is started with the
`spawn` method: gRPC and the OpenTelemetry SDK are not fork-safe once they run threads.

The supervisor (this process) starts worker 0 on the configured address (port 0 = a free port),
then the others on the port it bound, forwards SIGTERM/SIGINT, and exits when any worker exits
(an orchestrator restarts the whole set). Per worker: metrics on port+index (0 stays 0: a free
port each), the health-only port shared (gRPC servers set SO_REUSEPORT by default), the audit
log in `<audit_dir>/worker-<index>/` (one hash chain per writer process).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from autoglm.server.settings import Settings, split_host_port

log = logging.getLogger("autoglm.server.workers")

_START_TIMEOUT_S = 120.0


def _with_port(address: str, port: int) -> str:
    host, _ = split_host_port(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_settings(
    settings: Settings, index: int, port: int | None, openai_port: int | None = None
) -> Settings:
    """Settings of worker `index`; `port` / `openai_port` = the shared ports of the gRPC and the
    OpenAI API (None for worker 0: as configured, so that port 0 is resolved once)."""
    listen = settings.listen
    if port is not None:
        listen = _with_port(listen, port)
    openai_listen = settings.openai_listen
    if openai_listen is not None and openai_port is not None:
        openai_listen = _with_port(openai_listen, openai_port)
    metrics = settings.metrics_listen
    if metrics:
        mhost, mport = split_host_port(metrics)
        if mport:
            metrics = f"[{mhost}]:{mport + index}" if ":" in mhost else f"{mhost}:{mport + index}"
    audit = settings.audit_dir / f"worker-{index}" if settings.audit_dir else None
    return replace(
        settings,
        listen=listen,
        openai_listen=openai_listen,
        metrics_listen=metrics,
        audit_dir=audit,
    )


def _worker_main(
    settings: Settings, index: int, conn: Connection, log_level: str, log_format: str
) -> None:
    """Entry point of one worker process: a whole façade; reports its bound port on `conn`."""

    from autoglm.server.app import run_event_loop, serve_until_signal, start_server
    from autoglm.server.telemetry import logs, tracing

    logs.setup_logging(log_level, log_format)

    async def main() -> None:
        running = await start_server(settings)
        conn.send((running.port, running.openai_port))
        conn.close()
        await serve_until_signal(running, settings.grace_period_s)

    # Per process: the SDK's exporter threads do not survive a fork.
    tracing.setup_tracing(tracing.TracingSettings(span_export=settings.span_export))
    try:
        run_event_loop(main(), settings.event_loop)
    finally:
        tracing.shutdown_tracing()


class _Supervisor:
    def __init__(self, settings: Settings, log_level: str, log_format: str) -> None:
        self.settings = settings
        self.log_level = log_level
        self.log_format = log_format
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.stopping = False

    def start(
        self, index: int, port: int | None, openai_port: int | None = None
    ) -> tuple[int, int | None]:
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker_main,
            args=(
                worker_settings(self.settings, index, port, openai_port),
                index,
                child,
                self.log_level,
                self.log_format,
            ),
            name=f"autoglm-worker-{index}",
        )
        proc.start()
        child.close()
        self.procs.append(proc)
        ready = wait([parent, proc.sentinel], timeout=_START_TIMEOUT_S)
        if parent not in ready:
            raise RuntimeError(f"worker {index} (pid {proc.pid}) did not start")
        bound, openai_bound = parent.recv()
        parent.close()
        return int(bound), openai_bound

    def signal_all(self, signum: int = signal.SIGTERM) -> None:
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def join_all(self, timeout: float) -> None:
        for proc in self.procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()


def run_workers(settings: Settings, log_level: str, log_format: str) -> int:
    """Run `settings.workers` façade processes on one port until a signal or a worker exits."""
    settings.validate()
    sup = _Supervisor(settings, log_level, log_format)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        sup.stopping = True
        sup.signal_all(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        port, openai_port = sup.start(0, None)
        for index in range(1, settings.workers):
            sup.start(index, port, openai_port)
        pids = ", ".join(str(p.pid) for p in sup.procs)
        log.info("%d workers listening on port %d (pids %s)", settings.workers, port, pids)
        while not sup.stopping:
            if wait([p.sentinel for p in sup.procs], timeout=1.0):
                break  # a worker exited: stop the set, the orchestrator restarts it
        if not sup.stopping:
            gone = [f"{p.name} (exit {p.exitcode})" for p in sup.procs if not p.is_alive()]
            log.error("worker exited: %s; stopping the others", ", ".join(gone))
    finally:
        sup.signal_all(signal.SIGTERM)
        sup.join_all(settings.grace_period_s + 5.0)
    return 0 if sup.stopping else 1
