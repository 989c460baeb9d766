"""The audit chain's anchor: heads written outside the chain, and `audit verify --anchor`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import grpc
import pytest

from autoglm.server.audit.anchor import AnchorSink, anchor_sink, read_anchors
from autoglm.server.audit.verify import audit_cli
from autoglm.server.audit.writer import AuditRecord, AuditWriter, canonical_json, record_hash


def _write(writer: AuditWriter, n: int) -> None:
    for i in range(n):
        writer.write(AuditRecord(request_id=f"r{i}", rpc="Generate", status=grpc.StatusCode.OK))


def _chain(tmp_path: Path, n: int, anchor_every: int) -> tuple[Path, Path]:
    """A chain of `n` records, anchored after every `anchor_every` of them."""
    log, anchors = tmp_path / "audit", tmp_path / "other-volume" / "anchors.jsonl"
    sink = anchor_sink(str(anchors), log / "audit.jsonl")
    assert sink is not None
    with AuditWriter(log / "audit.jsonl", fsync=False) as writer:
        for _ in range(n // anchor_every):
            _write(writer, anchor_every)
            assert sink.write(writer.head)
        assert not sink.write(writer.head), "an unchanged head is not anchored twice"
    return log, anchors


def test_anchor_lines_name_the_chain_and_its_head(tmp_path: Path) -> None:
    log, anchors = _chain(tmp_path, 6, 3)
    read = read_anchors(anchors)
    assert [a.seq for a in read] == [3, 6]
    last = json.loads((log / "audit.jsonl").read_text().splitlines()[-1])
    assert read[-1].hash == last["hash"]
    assert read[-1].chain.endswith(str((log / "audit.jsonl").resolve()))
    assert read[-1].time.endswith("Z")


def test_an_empty_chain_is_not_anchored(tmp_path: Path) -> None:
    sink = AnchorSink(str(tmp_path / "a.jsonl"), chain="c")
    assert not sink.write((0, "0" * 64))
    assert not (tmp_path / "a.jsonl").exists()


def test_verify_with_the_anchor_passes_on_an_intact_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, anchors = _chain(tmp_path, 6, 3)
    assert audit_cli(["verify", str(log), "--anchor", str(anchors)]) == 0
    assert "anchors: 2 kept (newest seq 6)" in capsys.readouterr().out


def test_truncation_is_caught_only_with_the_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, anchors = _chain(tmp_path, 6, 3)
    path = log / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:4]))  # the newest two records cut off: still a valid chain
    assert audit_cli(["verify", str(log)]) == 0
    capsys.readouterr()
    assert audit_cli(["verify", str(log), "--anchor", str(anchors)]) == 1
    out = capsys.readouterr().out
    assert "truncated" in out and "seq 6" in out and "ends at 4" in out


def test_a_recomputed_chain_is_caught_by_the_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An attacker who edits record 2 and recomputes every hash after it keeps the chain valid,
    but not the anchored hashes."""
    log, anchors = _chain(tmp_path, 6, 3)
    path = log / "audit.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries[1]["principal"] = "someone-else"
    prev = entries[0]["hash"]
    for entry in entries[1:]:
        entry["prev"] = prev
        entry["hash"] = prev = record_hash(entry)
    path.write_bytes(b"".join(canonical_json(e) + b"\n" for e in entries))
    assert audit_cli(["verify", str(log)]) == 0
    capsys.readouterr()
    assert audit_cli(["verify", str(log), "--anchor", str(anchors)]) == 1
    assert "rewritten: seq 3 has another hash" in capsys.readouterr().out


def test_an_anchor_file_of_several_chains_needs_the_chain_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, anchors = _chain(tmp_path, 3, 3)
    other = AnchorSink(str(anchors), chain="worker-1")
    assert other.write((99, "f" * 64))
    assert audit_cli(["verify", str(log), "--anchor", str(anchors)]) == 2
    assert "several chains" in capsys.readouterr().err
    chain = read_anchors(anchors)[0].chain
    assert audit_cli(["verify", str(log), "--anchor", str(anchors), "--chain", chain]) == 0
    assert audit_cli(["verify", str(log), "--anchor", str(anchors), "--chain", "worker-1"]) == 1


def test_a_garbled_anchor_file_is_a_usage_error_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, anchors = _chain(tmp_path, 3, 3)
    with anchors.open("a") as f:
        f.write("not json\n")
    assert audit_cli(["verify", str(log), "--anchor", str(anchors)]) == 2
    assert f"{anchors}:2: not an anchor line" in capsys.readouterr().err


def test_syslog_anchor_reaches_a_real_syslog_socket(tmp_path: Path) -> None:
    """The syslog sink sends RFC 3164 datagrams to a unix socket, as to /dev/log."""
    address = tmp_path / "log.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(address))
    receiver.settimeout(5)
    try:
        sink = AnchorSink(f"syslog:{address}", chain="host:/var/log/autoglm/audit.jsonl")
        assert sink.write((7, "a" * 64))
        datagram = receiver.recv(4096).decode()
        sink.close()
    finally:
        receiver.close()
    # <facility authpriv (10) * 8 + info (6)>, then our ident, then the anchor line.
    assert datagram.startswith("<86>autoglm-audit: {")
    exported = tmp_path / "exported.log"
    exported.write_text(datagram.rstrip("\x00") + "\n")
    (anchor,) = read_anchors(exported)  # a SIEM's export of the lines reads back
    assert (anchor.seq, anchor.hash) == (7, "a" * 64)


def test_an_unreachable_syslog_raises_for_the_caller_to_count(tmp_path: Path) -> None:
    sink = AnchorSink(f"syslog:{tmp_path / 'no-such.sock'}", chain="c")
    with pytest.raises(OSError):
        sink.write((1, "b" * 64))


def test_a_bad_syslog_address_is_refused() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        AnchorSink("syslog:nonsense", chain="c")
