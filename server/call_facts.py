"""What is known of the call being handled, gathered for its audit record as the call goes.

Every decision about a call is taken in a different layer: the auth interceptor (who, or why
refused), admission (which limit refused it), the generation (counts). Each notes what it
decided on the current call's `CallFacts`; whoever writes the call's audit record at the end
reads them (audit/interceptor.py for gRPC, the OpenAI routes for HTTP, or the generation itself,
which then marks the call as recorded so it is not recorded twice).

A mutable object in a contextvar rather than a contextvar per fact: tasks started inside the call
(an HTTP streaming response runs in a child task with a copy of the context) see and fill the
same object.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

__all__ = ["CallFacts", "begin", "current", "note_principal", "note_reason"]


@dataclass
class CallFacts:
    api: str  # "grpc" | "openai"
    method: str  # "/autoglm.v1.TextGeneration/ListModels", "GET /v1/models", …
    peer: str | None  # the caller's address as the transport gives it ("ipv4:127.0.0.1:4242")
    principal: Any = None  # security.auth.Principal once authenticated
    reason: str | None = None  # why the call was refused: an auth failure, a limit, …
    recorded: bool = False  # the generation wrote this call's record itself


_current: contextvars.ContextVar[CallFacts | None] = contextvars.ContextVar(
    "autoglm_call_facts", default=None
)


def begin(api: str, method: str, peer: str | None) -> CallFacts:
    """Start the facts of a new call in the current context (one per RPC task)."""
    facts = CallFacts(api=api, method=method, peer=peer)
    _current.set(facts)
    return facts


def current() -> CallFacts | None:
    """The facts of the call being handled; None outside an audited call."""
    return _current.get()


def note_reason(reason: str) -> None:
    """Why the current call was refused (the first reason noted wins: it is the cause)."""
    facts = _current.get()
    if facts is not None and facts.reason is None:
        facts.reason = reason


def note_principal(principal: Any) -> None:
    facts = _current.get()
    if facts is not None:
        facts.principal = principal
