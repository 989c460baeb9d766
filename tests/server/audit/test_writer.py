"""The hash-chained audit log: writing, tamper detection, torn writes, rotation, secrets."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from autoglm.server.audit.verify import audit_cli, verify, verify_dir
from autoglm.server.audit.writer import (
    GENESIS,
    AuditError,
    AuditRecord,
    AuditWriter,
    principal_fields,
    record_hash,
    rotated_files,
)
from autoglm.server.security.auth import Principal
from autoglm.server.security.bearer_tokens import TokenStore


def _record(i: int, **extra: Any) -> AuditRecord:
    return AuditRecord(
        request_id=f"req-{i}",
        rpc="/autoglm.v1.TextGeneration/GenerateStream",
        status=grpc.StatusCode.OK,
        trace_id=f"{i:032x}",
        principal="payments",
        cert_identity="spiffe://bank.example/payments",
        token_id="0123456789ab",
        model="smol",
        prompt_tokens=12,
        completion_tokens=34,
        duration_ms=56.789,
        finish_reason="length",
        **extra,
    )


def _write(path: Path, n: int, **writer_options: Any) -> None:
    with AuditWriter(path, fsync=False, **writer_options) as writer:
        for i in range(n):
            writer.write(_record(i))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _write(path, 10)
    return path


def test_records_are_chained_and_verify(log: Path) -> None:
    entries = [json.loads(line) for line in _lines(log)]
    assert [e["seq"] for e in entries] == list(range(1, 11))
    assert entries[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(entries):
        assert after["prev"] == before["hash"] == record_hash(before)
    first = entries[0]
    assert first["status"] == "OK" and first["token_id"] == "0123456789ab"
    assert first["time"].endswith("Z") and datetime.fromisoformat(first["time"]).tzinfo
    assert "prompt" not in first and "completion" not in first
    result = verify([log])
    assert result.ok and result.records == 10 and result.anchored
    assert result.head == (10, entries[-1]["hash"])
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_edited_field_is_detected_at_that_record(log: Path) -> None:
    lines = _lines(log)
    lines[4] = lines[4].replace('"completion_tokens":34', '"completion_tokens":3')
    log.write_text("".join(lines))
    problem = verify([log]).problem
    assert problem is not None
    assert (problem.line, problem.seq, problem.reason) == (5, 5, "edited")


def test_edit_with_recomputed_hash_breaks_the_next_link(log: Path) -> None:
    lines = _lines(log)
    entry = json.loads(lines[4])
    entry["status"] = "PERMISSION_DENIED"
    entry["hash"] = record_hash(entry)
    lines[4] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    log.write_text("".join(lines))
    problem = verify([log]).problem
    assert problem is not None
    assert (problem.line, problem.seq, problem.reason) == (6, 6, "broken link")


def test_duplicate_key_trick_is_detected(log: Path) -> None:
    # json keeps the last duplicate, other parsers the first: a non-canonical line is an edit.
    lines = _lines(log)
    lines[2] = '{"status":"PERMISSION_DENIED",' + lines[2][1:]
    log.write_text("".join(lines))
    problem = verify([log]).problem
    assert problem is not None and (problem.line, problem.reason) == (3, "edited")


def test_deleted_line_is_detected(log: Path) -> None:
    lines = _lines(log)
    del lines[3]
    log.write_text("".join(lines))
    problem = verify([log]).problem
    assert problem is not None
    assert (problem.line, problem.seq, problem.reason) == (4, 5, "deleted")


def test_swapped_lines_are_detected(log: Path) -> None:
    lines = _lines(log)
    lines[6], lines[7] = lines[7], lines[6]
    log.write_text("".join(lines))
    problem = verify([log]).problem
    assert problem is not None
    assert (problem.line, problem.seq, problem.reason) == (7, 8, "reordered")


def test_bad_json_is_detected(log: Path) -> None:
    lines = _lines(log)
    lines[1] = lines[1][:40] + "\n"
    log.write_text("".join(lines))
    problem = verify([log]).problem
    assert problem is not None
    assert (problem.line, problem.seq, problem.reason) == (2, None, "bad json")


def test_torn_last_line_is_cut_and_the_chain_continues(
    log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = log.read_bytes()
    log.write_bytes(data[:-25])  # a crash in the middle of writing record 10
    assert not verify([log]).ok
    with caplog.at_level(logging.WARNING), AuditWriter(log, fsync=False) as writer:
        entry = writer.write(_record(99))
    assert entry["seq"] == 10  # record 10 never completed: its seq is reused
    assert "torn final line" in caplog.text
    result = verify([log])
    assert result.ok and result.records == 10


def test_nul_filled_tail_is_cut(log: Path) -> None:
    # ext4 in data=writeback can leave NULs where an unflushed append was.
    with log.open("ab") as f:
        f.write(b"\0" * 300)
    with AuditWriter(log, fsync=False) as writer:
        assert writer.write(_record(11))["seq"] == 11
    assert verify([log]).ok


def test_reopening_continues_the_chain(log: Path) -> None:
    _write(log, 5)
    result = verify([log])
    assert result.ok and result.records == 15


def test_unreadable_last_record_refuses_to_start(log: Path) -> None:
    with log.open("a") as f:
        f.write("not json\n")
    with pytest.raises(AuditError, match="unreadable"):
        AuditWriter(log)


def test_one_writer_per_file(log: Path) -> None:
    with AuditWriter(log, fsync=False), pytest.raises(AuditError, match="locked"):
        AuditWriter(log)


def _line_size(tmp_path: Path) -> int:
    probe = tmp_path / "probe" / "audit.jsonl"
    _write(probe, 1)
    return len(probe.read_bytes())


def test_rotation_across_three_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 9, max_bytes=3 * _line_size(tmp_path) + 10, backups=5)  # 3 records per file
    files = rotated_files(path)
    assert [f.name for f in files] == ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    assert [len(_lines(f)) for f in files] == [3, 3, 3]
    first_of_second = json.loads(_lines(files[1])[0])
    last_of_first = json.loads(_lines(files[0])[-1])
    assert first_of_second["prev"] == last_of_first["hash"]
    result = verify_dir(tmp_path)
    assert result.ok and result.records == 9 and result.anchored

    files[1].unlink()  # an insider removes the middle file
    problem = verify_dir(tmp_path).problem
    assert problem is not None
    assert (problem.file.name, problem.line, problem.seq, problem.reason) == (
        "audit.jsonl",
        1,
        7,
        "deleted",
    )


def test_rotation_drops_the_oldest_and_verify_reports_unanchored(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 12, max_bytes=2 * _line_size(tmp_path) + 10, backups=2)  # 2 records per file
    assert [f.name for f in rotated_files(path)] == [
        "audit.jsonl.2",
        "audit.jsonl.1",
        "audit.jsonl",
    ]
    result = verify_dir(tmp_path)
    assert result.ok and not result.anchored and result.first_seq == 7
    strict = verify_dir(tmp_path, require_genesis=True)
    assert strict.problem is not None and strict.problem.reason == "deleted"


def test_writer_continues_from_the_backup_after_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 4)
    # A crash between the rotation's rename and the next record: no current file.
    path.rename(tmp_path / "audit.jsonl.1")
    with AuditWriter(path, fsync=False) as writer:
        assert writer.write(_record(5))["seq"] == 5
    result = verify_dir(tmp_path)
    assert result.ok and result.records == 5


def test_text_is_recorded_masked_only_when_enabled(tmp_path: Path) -> None:
    prompt = "我的手机是13812345678，邮箱 li@example.cn"
    with AuditWriter(tmp_path / "plain.jsonl", fsync=False) as writer:
        plain = writer.write(_record(1, prompt=prompt, completion="ok"))
    assert "prompt" not in plain and "13812345678" not in (tmp_path / "plain.jsonl").read_text()

    with AuditWriter(tmp_path / "text.jsonl", record_text=True, fsync=False) as writer:
        entry = writer.write(_record(1, prompt=prompt, completion="卡号 4111 1111 1111 1111"))
    assert entry["prompt"] == "我的手机是[PHONE]，邮箱 [EMAIL]"
    assert entry["completion"] == "卡号 [BANK_CARD]"
    raw = (tmp_path / "text.jsonl").read_text()
    assert "13812345678" not in raw and "4111" not in raw and "li@example" not in raw
    assert json.loads(raw)["prompt"] == entry["prompt"]  # CJK survives the ASCII encoding
    assert verify([tmp_path / "text.jsonl"]).ok


def test_token_secret_never_reaches_the_log(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("alice", {"generate"})
    secret = token.split("_", 2)[2]
    principal = Principal.from_record(store.verify(token))
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, record_text=True, fsync=False) as writer:
        writer.write(
            AuditRecord(request_id="r1", rpc="/x", status="OK", **principal_fields(principal))
        )
        # Mistakes a caller could make: the full token as token_id, a token pasted in a prompt.
        writer.write(AuditRecord(request_id="r2", rpc="/x", status="OK", token_id=token))
        writer.write(
            AuditRecord(request_id="r3", rpc="/x", status="OK", prompt=f"my key is {token}")
        )
    raw = path.read_text()
    assert secret not in raw and token not in raw
    entries = [json.loads(line) for line in raw.splitlines()]
    assert entries[0]["token_id"] == record.id and entries[0]["principal"] == "alice"
    assert entries[1]["token_id"] == record.id
    assert record.id in entries[2]["prompt"]


def test_naive_time_is_refused(tmp_path: Path) -> None:
    with AuditWriter(tmp_path / "a.jsonl", fsync=False) as writer, pytest.raises(ValueError):
        writer.write(AuditRecord(request_id="r", rpc="/x", status="OK", time=datetime(2025, 1, 1)))
    record = AuditRecord(
        request_id="r", rpc="/x", status="OK", time=datetime(2025, 1, 2, 3, 4, 5, 678900, UTC)
    )
    with AuditWriter(tmp_path / "b.jsonl", fsync=False) as writer:
        assert writer.write(record)["time"] == "2025-01-02T03:04:05.678Z"


async def test_concurrent_async_writes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditWriter(path, fsync=True, max_bytes=20_000) as writer:
        await asyncio.gather(*(writer.awrite(_record(i)) for i in range(60)))
        assert writer.head[0] == 60
    result = verify_dir(tmp_path)
    assert result.ok and result.records == 60


def test_cli(tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_cli(["verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 10 records in 1 file(s), from GENESIS")
    lines = _lines(log)
    del lines[2]
    log.write_text("".join(lines))
    assert audit_cli(["verify", str(log)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED after 2 good records:") and "audit.jsonl:3 seq=4: deleted" in out
    assert audit_cli(["verify", str(tmp_path / "missing")]) == 2
    assert audit_cli(["bogus"]) == 2


def test_failed_append_is_rolled_back(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def half_then_fail(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    with AuditWriter(log, fsync=False) as writer:
        monkeypatch.setattr(os, "write", half_then_fail)
        with pytest.raises(AuditError, match="No space"):
            writer.write(_record(11))
        monkeypatch.setattr(os, "write", real_write)
        assert writer.write(_record(12))["seq"] == 11  # the failed record took no seq
    assert verify([log]).ok


def test_failed_rotation_keeps_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    size = _line_size(tmp_path)
    real_rename = Path.rename
    calls = 0

    def failing_once(self: Path, target: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(13, "Permission denied")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_once)
    with AuditWriter(path, fsync=False, max_bytes=2 * size + 10) as writer:
        for i in range(5):
            writer.write(_record(i))
    # The first rotation failed (the file grew to 3 records), the next one worked.
    assert [len(_lines(f)) for f in rotated_files(path)] == [3, 2]
    assert verify_dir(tmp_path).records == 5
