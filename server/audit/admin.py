"""Audit records of administrative commands (token create and revoke), written by the CLI.

The running façade holds its own chain's lock (one writer per chain, writer.py), so the admin
commands keep a chain of their own: `<audit dir>/admin/audit.jsonl`, verified like any other
(`autoglm audit verify <audit dir>/admin`). Two commands at once take turns on its lock. The
record names the operating-system user who ran the command and what it acted on; never a token.
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path

from autoglm.server.audit.writer import AuditError, AuditRecord, AuditWriter

__all__ = ["ADMIN_CHAIN", "record_admin"]

ADMIN_CHAIN = "admin"
_LOCK_WAIT_S = 10.0


def _operator() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "os:unknown"


def record_admin(audit_dir: Path, action: str, status: str, target: str) -> dict[str, object]:
    """Append one record of `action` ("token.create", "token.revoke") to the admin chain.

    Raises AuditError when the chain cannot be written: the caller reports it and fails, so an
    unrecorded administrative change is never silent.
    """
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            writer = AuditWriter(audit_dir / ADMIN_CHAIN / "audit.jsonl")
            break
        except AuditError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # another admin command is writing its record
    with writer:
        return writer.write(
            AuditRecord(
                request_id="-",
                rpc=action,
                status=status,
                principal=_operator(),
                target=target,
            )
        )
