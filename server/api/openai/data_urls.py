"""`image_url` parts of the OpenAI API: `data:` URLs only, decoded with a size limit.

The server never fetches a URL or reads a path on a caller's behalf (a vLLM server started
with `--allowed-local-media-path /`, as some guides do, lets callers read its files): `http:`,
`https:`, `file:` and every other scheme get a 400 naming the part. The MIME type a data URL
claims is returned for information only; images.check_image sniffs the real one.
"""

from __future__ import annotations

import base64
import binascii

from autoglm.server.errors import InvalidArgument

_EXAMPLE = "data:image/png;base64,<data>"


def decode_data_url(url: str, field: str, *, max_bytes: int) -> tuple[str, bytes]:
    """(claimed MIME type, bytes) of a base64 `data:` URL, or InvalidArgument naming `field`."""

    def refuse(why: str) -> InvalidArgument:
        return InvalidArgument([(field, why)])

    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() != "data":
        shown = f"{scheme.lower()}: URLs are" if sep and scheme.isalpha() else "this URL is"
        raise refuse(
            f"{shown} not accepted: send the image inline as {_EXAMPLE};"
            " this server never fetches URLs or reads files"
        )
    header, comma, payload = rest.partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not comma or "base64" not in params[1:]:
        raise refuse(f"must be a base64 data URL ({_EXAMPLE})")
    # Checked before decoding: base64 carries 3 bytes per 4 characters.
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise refuse(f"the image is over the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise refuse("is not valid base64") from None
    if len(data) > max_bytes:
        raise refuse(f"the image is over the limit of {max_bytes} bytes")
    return params[0] or "text/plain", data
