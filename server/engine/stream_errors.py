"""The façade's error for an error that Triton reports inside a stream.

On ModelStreamInfer Triton sends a request's failure as the stream response's `error_message`,
with no gRPC status. A model that is not loaded (unloaded, or between an unload and the next
load: a version switch that unloads first, model_versions.py) answers "Request for unknown
model: '<name>' has no available versions" (seen from Triton 2.51 in
tests/integration/test_model_versions.py) or "... is not found" (Triton core
ModelRepositoryManager::FindModelIdentifier). Those are a temporary absence, so the caller gets
UNAVAILABLE (which clients retry), not INTERNAL.
"""

from __future__ import annotations

from autoglm.server.errors import EngineFailure, EngineUnavailable, ServiceError

_NOT_LOADED = "Request for unknown model:"


def stream_error(message: str) -> ServiceError:
    if message.startswith(_NOT_LOADED):
        return EngineUnavailable(f"engine unavailable: {message}")
    return EngineFailure(message)
