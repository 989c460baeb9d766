"""Request header fields as HPACK literals that never enter the dynamic table (RFC 7541).

The engine reader (reader.py) encodes every call's headers on the event loop. The pure-Python
`hpack.Encoder` took ~34 µs per request for its nine fields against ~1 µs here (measured on
the 2-core development VM). Stateless fields also make the constant part of every
request's header block one precomputed byte string. Triton's secret goes "never indexed", as
RFC 7541 §7.1.3 advises for values an attacker must not probe, so it is never in a compression
table. Decoding responses stays with the `hpack` package.
"""

from __future__ import annotations

__all__ = ["hpack_int", "hpack_literal"]


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) in a `prefix_bits`-bit prefix; `first` holds the first
    byte's other (high) bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes, *, never_indexed: bool = False) -> bytes:
    """One header field as an HPACK literal with a literal name, kept out of the dynamic table
    (RFC 7541 §6.2.2 "without indexing", §6.2.3 "never indexed"), strings without Huffman
    coding (§5.2)."""
    return (
        bytes((0x10 if never_indexed else 0x00,))
        + hpack_int(len(name), 7)
        + name
        + hpack_int(len(value), 7)
        + value
    )
