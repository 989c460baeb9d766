"""Audit records of canary decisions (audit/canary.py)."""

from __future__ import annotations

from autoglm.server.audit.canary import canary_records
from autoglm.server.engine.canary import Route


def rows(before: dict[str, Route], after: dict[str, Route], **kw: str) -> list[tuple]:  # type: ignore[type-arg]
    return [(r.rpc, r.target, r.reason) for r in canary_records(before, after, **kw)]


def test_start_reweight_promote_rollback() -> None:
    plain, canary = {"m": Route("m", 1)}, {"m": Route("m", 1, 2, 10)}
    assert rows({}, plain) == [] and rows(plain, plain) == [] and rows(canary, canary) == []
    assert rows(plain, canary) == [("model.canary", "m:2", "10% of principals beside version 1")]
    assert rows({}, canary) == [("model.canary", "m:2", "10% of principals beside version 1")]
    assert rows(canary, {"m": Route("m", 1, 2, 50)}) == [
        ("model.canary", "m:2", "50% of principals beside version 1 (was version 2 at 10%)")
    ]
    assert rows(canary, {"m": Route("m", 2)}) == [("model.promote", "m:2", "from version 1")]
    assert rows(canary, plain) == [("model.rollback", "m:2", "canary ended; version 1 alone")]
    assert rows(canary, plain, reason="error rate 1.00 vs 0.00") == [
        ("model.rollback", "m:2", "error rate 1.00 vs 0.00")
    ]
