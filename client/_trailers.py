"""Call facts the server sends as trailing metadata, besides the trace id (`_tracing.py`).

Pure parsing: a trailer the client cannot read is reported as absent (None), never raised, so a
newer or misbehaving server cannot fail a call that otherwise succeeded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["MODEL_VERSION_KEY", "model_version_from"]

# Which model version answered a Generate / GenerateStream (a canary's or the stable one). The
# façade sends it only for models served from a model repository: server/api/service.py
# (VERSION_TRAILER) and docs/build.md, "Canary releases". Its value is the version as decimal.
MODEL_VERSION_KEY = "x-autoglm-model-version"


def model_version_from(metadata: Iterable[tuple[str, Any]] | None) -> int | None:
    """The server's `x-autoglm-model-version` trailer as an int; None when it is absent or is
    not a positive decimal integer (Triton model versions start at 1)."""
    for key, value in metadata or ():
        if key != MODEL_VERSION_KEY:
            continue
        # isascii + isdigit: int() alone would also take " 3", "+3", "1_0" and non-ASCII digits.
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            return None
        try:
            version = int(value)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            return None
        return version if version > 0 else None
    return None
