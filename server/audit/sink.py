"""Where every front door hands its audit records: one writer thread, failures counted.

One thread keeps records in the order the calls ended, off the event loop (an fsync per record
costs ~2 ms on a local disk). A write that fails is an incident: it is logged at CRITICAL and
counted (`autoglm_audit_write_failures_total`), and with `required` (`--audit-required`) the
service fails closed: while the last write failed, new calls are refused with UNAVAILABLE.
Their refusals are still offered to the log, so the first write that succeeds again (space
freed, volume back) reopens the service without a restart. The call during which the log
first fails has already been answered: its record is the one lost, and the metric says so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from autoglm.server.audit.writer import AuditRecord, AuditWriter

__all__ = ["AuditSink"]

log = logging.getLogger("autoglm.server.audit")

REFUSAL = "audit log unavailable: calls are refused until it can be written (--audit-required)"


class AuditSink:
    def __init__(
        self,
        writer: AuditWriter | None,
        *,
        required: bool = False,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.writer = writer
        self.required = required and writer is not None
        self._on_failure = on_failure or (lambda: None)
        self._failing = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    @property
    def record_text(self) -> bool:
        return self.writer is not None and self.writer.record_text

    @property
    def failing(self) -> bool:
        """True while the last write failed."""
        return self._failing

    def refusal(self) -> str | None:
        """Why a new call must be refused now (fail closed), or None."""
        return REFUSAL if self.required and self._failing else None

    def submit(self, record: AuditRecord) -> Future[Any] | None:
        """Queue `record` for writing; returns the write's future (None when auditing is off)."""
        if self.writer is None:
            return None
        return self._pool.submit(self._write, record)

    def _write(self, record: AuditRecord) -> None:
        assert self.writer is not None
        try:
            self.writer.write(record)
        except Exception as exc:
            with self._lock:
                self._failing = True
            self._on_failure()
            # Loud on purpose: an audit gap is an incident (alert on the metric).
            log.critical("AUDIT WRITE FAILED (%s %s): %r", record.rpc, record.status, exc)
            return
        if self._failing:
            with self._lock:
                self._failing = False
            log.warning("audit log writable again")

    def model_switch(self, model: str, version: int, previous: int | None) -> None:
        """Which version answers every caller is a decision: recorded at start and each switch."""
        self.submit(
            AuditRecord(
                request_id="-",
                rpc="model.switch",
                status="OK",
                model=model,
                target=f"{model}:{version}",
                reason="at start" if previous is None else f"from version {previous}",
            )
        )

    def flush(self, timeout: float | None = None) -> None:
        """Return once every record submitted so far has been written (or has failed)."""
        self._pool.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        """Write what is queued, then close the log (after the front doors have stopped)."""
        self._pool.shutdown(wait=True)
        if self.writer is not None:
            self.writer.close()
