"""The audit sink: a failed write is counted and, with --audit-required, closes the service
until a write succeeds again. The failure is real: the kernel's file-size limit (RLIMIT_FSIZE)
makes the append fail with EFBIG, as a full volume would with ENOSPC, in a child process so
that the limit touches nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc

from autoglm.server.audit.sink import REFUSAL, AuditSink
from autoglm.server.audit.verify import verify_dir
from autoglm.server.audit.writer import AuditRecord, AuditWriter

_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    import grpc
    from autoglm.server.audit.sink import AuditSink
    from autoglm.server.audit.writer import AuditRecord, AuditWriter

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    path = Path(sys.argv[1]) / "audit.jsonl"
    failures = []
    sink = AuditSink(AuditWriter(path), required=sys.argv[2] == "1",
                     on_failure=lambda: failures.append(1))

    def write(i):
        sink.submit(AuditRecord(request_id=f"r{i}", rpc="Generate", status=grpc.StatusCode.OK))
        sink.flush(timeout=10)
        return {"failing": sink.failing, "refusal": sink.refusal(), "failures": len(failures)}

    steps = [write(0)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 10, hard))
    steps.append(write(1))  # the volume is "full"
    steps.append(write(2))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    steps.append(write(3))  # space again
    sink.close()
    print(json.dumps(steps))
    """
)


def _run(tmp_path: Path, required: bool) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), "1" if required else "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "AUDIT WRITE FAILED" in done.stderr  # logged at CRITICAL, every time
    return json.loads(done.stdout)


def test_required_audit_fails_closed_and_reopens_when_writable(tmp_path: Path) -> None:
    steps = _run(tmp_path, required=True)
    assert steps[0] == {"failing": False, "refusal": None, "failures": 0}
    assert steps[1] == {"failing": True, "refusal": REFUSAL, "failures": 1}
    assert steps[2]["failures"] == 2 and steps[2]["refusal"] == REFUSAL
    assert steps[3] == {"failing": False, "refusal": None, "failures": 2}
    # The lost records are lost, but the chain left behind is whole: no torn line.
    result = verify_dir(tmp_path)
    assert result.ok and result.records == 2


def test_optional_audit_counts_failures_but_never_refuses(tmp_path: Path) -> None:
    steps = _run(tmp_path, required=False)
    assert [s["failures"] for s in steps] == [0, 1, 2, 2]
    assert all(s["refusal"] is None for s in steps)
    assert steps[1]["failing"] is True and steps[3]["failing"] is False


def test_a_sink_without_a_log_writes_nothing_and_refuses_nothing() -> None:
    sink = AuditSink(None, required=True)
    assert not sink.enabled and sink.refusal() is None
    assert sink.submit(AuditRecord(request_id="r", rpc="x", status="OK")) is None
    sink.flush(timeout=5)
    sink.close()


def test_records_keep_peer_reason_and_target(tmp_path: Path) -> None:
    with AuditWriter(tmp_path / "audit.jsonl", fsync=False) as writer:
        entry = writer.write(
            AuditRecord(
                request_id="-",
                rpc="ListModels",
                status=grpc.StatusCode.UNAUTHENTICATED,
                peer="ipv4:10.0.0.7:51234",
                reason="expired",
            )
        )
    assert (entry["peer"], entry["reason"], entry["target"]) == (
        "ipv4:10.0.0.7:51234",
        "expired",
        None,
    )
    assert verify_dir(tmp_path).ok
