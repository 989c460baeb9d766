"""data: URLs only; every other scheme is refused naming the part, nothing is fetched."""

from __future__ import annotations

import base64

import pytest

from autoglm.server.api.openai.data_urls import decode_data_url
from autoglm.server.errors import InvalidArgument

FIELD = "messages[1].content[0].image_url.url"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


def refusal(url: str, max_bytes: int = 1 << 20) -> str:
    with pytest.raises(InvalidArgument) as info:
        decode_data_url(url, FIELD, max_bytes=max_bytes)
    ((field, why),) = info.value.violations
    assert field == FIELD
    return why


def test_a_base64_data_url() -> None:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert decode_data_url(url, FIELD, max_bytes=1 << 20) == ("image/png", PNG)
    # Parameters and case as RFC 2397 allows them.
    url = "DATA:image/jpeg;name=x.jpg;BASE64," + base64.b64encode(PNG).decode()
    assert decode_data_url(url, FIELD, max_bytes=1 << 20) == ("image/jpeg", PNG)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.com/screen.png", "https: URLs are not accepted"),
        ("http://10.0.0.5/screen.png", "http: URLs are not accepted"),
        ("file:///etc/passwd", "file: URLs are not accepted"),
        ("/etc/passwd", "this URL is not accepted"),
        ("", "this URL is not accepted"),
    ],
)
def test_no_url_is_fetched_and_no_file_read(url: str, shown: str) -> None:
    why = refusal(url)
    assert why.startswith(shown)
    assert "never fetches URLs or reads files" in why


def test_what_a_data_url_must_be() -> None:
    assert "base64 data URL" in refusal("data:image/png,rawbytes")
    assert "base64 data URL" in refusal("data:image/png;base64")
    assert refusal("data:image/png;base64,@@@not-base64@@@") == "is not valid base64"
    big = "data:image/png;base64," + base64.b64encode(bytes(3000)).decode()
    assert "over the limit of 1000 bytes" in refusal(big, max_bytes=1000)
    assert decode_data_url(big, FIELD, max_bytes=3000)[1] == bytes(3000)
