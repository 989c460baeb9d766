"""Typed Python client of the Open-AutoGLM API (`autoglm.v1.TextGeneration`).

    from autoglm.client import Client

    with Client.from_config() as client:          # profile file + AUTOGLM_* environment
        print(client.generate("The capital of France is", max_tokens=8).text)
        for delta in client.generate_stream(messages=[("user", "Hi!")]):
            print(delta.text, end="", flush=True)

`AsyncClient` offers the same methods for asyncio. Errors are `AutoGLMError` subclasses, one
per status code of the contract; results are plain frozen dataclasses. Calls are retried after
UNAVAILABLE (3 attempts by default, never once a stream has delivered a message, never past the
call's timeout); `ClientConfig(retry=RetryPolicy(...))` tunes that (docs/client-retries.md).
"""

from autoglm.client._async_client import AsyncClient
from autoglm.client._client import Client
from autoglm.client._config import ClientConfig
from autoglm.client._exceptions import (
    AuthenticationError,
    AutoGLMError,
    CancelledError,
    ConfigError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
    map_exceptions,
)
from autoglm.client._requests import Image, MessageLike
from autoglm.client._retry import RetryPolicy
from autoglm.client._types import Completion, Delta, ModelInfo, TokenCount
from autoglm.client._version import __version__

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "AutoGLMError",
    "CancelledError",
    "Client",
    "ClientConfig",
    "Completion",
    "ConfigError",
    "DeadlineExceededError",
    "Delta",
    "Image",
    "InternalError",
    "InvalidArgumentError",
    "MessageLike",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "TokenCount",
    "UnavailableError",
    "__version__",
    "map_exceptions",
]
