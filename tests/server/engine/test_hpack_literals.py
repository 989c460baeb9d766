"""Request header fields as HPACK literals: RFC 7541's integer examples, and a decode by the
`hpack` package (the decoder python-hyper's h2 uses) that keeps every field, the never-indexed
flag and an empty dynamic table."""

from __future__ import annotations

import hpack
import pytest

from autoglm.server.engine.hpack_literals import hpack_int, hpack_literal


@pytest.mark.parametrize(
    ("value", "prefix", "encoded"),
    [(10, 5, b"\x0a"), (1337, 5, b"\x1f\x9a\x0a"), (42, 8, b"\x2a"), (127, 7, b"\x7f\x00")],
)
def test_hpack_integers_as_rfc_7541_encodes_them(value: int, prefix: int, encoded: bytes) -> None:
    # Examples C.1.1–C.1.3 of RFC 7541, and a value that just fills its prefix.
    assert hpack_int(value, prefix) == encoded


def test_hpack_literals_decode_and_stay_out_of_the_dynamic_table() -> None:
    long_value = b"v" * 300  # a length past the 7-bit prefix
    block = (
        hpack_literal(b":path", b"/x")
        + hpack_literal(b"secret", b"s3cret", never_indexed=True)
        + hpack_literal(b"traceparent", long_value)
    )
    decoder = hpack.Decoder()
    fields = decoder.decode(block, raw=True)
    assert [tuple(f) for f in fields] == [
        (b":path", b"/x"),
        (b"secret", b"s3cret"),
        (b"traceparent", long_value),
    ]
    assert [f.indexable for f in fields] == [True, False, True]  # "never indexed" kept as such
    assert len(decoder.header_table.dynamic_entries) == 0  # nothing was added to the table
