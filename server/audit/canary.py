"""Audit records of canary decisions: which principals a version answers is a decision too.

`model.canary` when a canary starts or its version or weight changes, `model.promote` when it
becomes the only version, `model.rollback` when it ends otherwise (by `autoglm build activate
--rollback` and SIGHUP, or by the rollback guard, whose figures are the reason). Version switches
of the stable version stay `model.switch` records (sink.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from autoglm.server.audit.sink import AuditSink
from autoglm.server.audit.writer import AuditRecord
from autoglm.server.engine.canary import Route


def canary_records(
    before: Mapping[str, Route], after: Mapping[str, Route], *, reason: str | None = None
) -> list[AuditRecord]:
    """The records of what changed between two sets of routes (pure)."""
    out: list[AuditRecord] = []
    for model in sorted(after):
        b, a = before.get(model), after[model]
        was = b.canary if b is not None else None
        if a.canary is not None and (b is None or (b.canary, b.weight) != (a.canary, a.weight)):
            why = f"{a.weight}% of principals beside version {a.stable}"
            if was is not None:
                why += f" (was version {was} at {b.weight}%)" if b is not None else ""
            out.append(decision_record("model.canary", model, a.canary, reason or why))
        elif a.canary is None and was is not None and b is not None:
            if a.stable == was:
                why = f"from version {b.stable}"
                out.append(decision_record("model.promote", model, was, reason or why))
            else:
                why = f"canary ended; version {a.stable} alone"
                out.append(decision_record("model.rollback", model, was, reason or why))
    return out


def audit_canaries(
    audit: AuditSink,
    before: Mapping[str, Route],
    after: Mapping[str, Route],
    *,
    reason: str | None = None,
) -> None:
    for record in canary_records(before, after, reason=reason):
        audit.submit(record)


def decision_record(rpc: str, model: str, version: int, reason: str) -> AuditRecord:
    return AuditRecord(
        request_id="-",
        rpc=rpc,
        status="OK",
        model=model,
        target=f"{model}:{version}",
        reason=reason,
    )
