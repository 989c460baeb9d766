"""An engine model's refusal of a request value, as it sends it and as the façade reads it back.

The engine models answer a tensor they cannot serve with Triton's INVALID_ARG error
(`pb_utils.TritonError(msg, pb_utils.TritonError.INVALID_ARG)`) whose message names the tensor.
Triton keeps that code on `ModelStreamInfer` only for a caller that sent the header
`triton_grpc_error: true` (then the stream ends with gRPC INVALID_ARGUMENT); for every other
caller the code is dropped and only the text arrives, in the stream response's `error_message`
(both seen with Triton 2.51). So the text itself says "invalid input tensor '<name>'", and the
façade recognises a refusal by it (`parse_refusal`) whichever way it came.
"""

from __future__ import annotations

import re

__all__ = ["Refusal", "parse_refusal"]

_PATTERN = re.compile(r"invalid input tensor '([A-Za-z0-9_]+)': (.*)", re.DOTALL)


class Refusal(ValueError):
    """A request the engine refuses because of one tensor's value or shape (INVALID_ARGUMENT)."""

    def __init__(self, tensor: str, reason: str) -> None:
        self.tensor = tensor
        self.reason = reason
        super().__init__(f"invalid input tensor '{tensor}': {reason}")


def parse_refusal(message: str) -> Refusal | None:
    """The refusal an engine error message carries (anywhere in it), or None."""
    found = _PATTERN.search(message)
    return Refusal(found.group(1), found.group(2)) if found else None
