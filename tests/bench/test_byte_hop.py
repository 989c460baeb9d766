"""byte_hop.py (bench tool): bytes go both ways unchanged, and a half-close reaches the far end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from autoglm.bench import byte_hop


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()  # until the caller's EOF, forwarded by the hop
    writer.write(data[::-1])
    await writer.drain()
    writer.close()


async def test_forwards_both_ways_and_the_callers_eof(tmp_path: Path) -> None:
    upstream = await asyncio.start_unix_server(_echo, str(tmp_path / "triton.sock"))
    listen = tmp_path / "hop.sock"
    hop = await byte_hop.start(listen, str(tmp_path / "triton.sock"))
    try:
        assert listen.stat().st_mode & 0o777 == 0o600  # only its owner may connect
        reader, writer = await asyncio.open_unix_connection(str(listen))
        payload = bytes(range(256)) * 1024  # more than one socket read
        writer.write(payload)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == payload[::-1]
        writer.close()
    finally:
        hop.close()
        upstream.close()


def test_refuses_a_target_that_is_not_a_unix_socket(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        byte_hop.main(["--listen", "/tmp/x.sock", "--triton", "127.0.0.1:8001"])
    assert exc.value.code == 2
    assert "--triton: a unix:/path target is needed" in capsys.readouterr().err
