"""The HTTP routes of the OpenAI-compatible front door (a Starlette app).

Every API route authenticates the same way as gRPC (security/auth.py `authenticate_bearer`:
the same token store, scopes, model allow-lists and certificate binding), reads its body up to
the configured limit (413 beyond it, before any parsing), and is traced from the caller's
`traceparent`. `/healthz` (liveness) and `/readyz` (the deep readiness gRPC health reports)
take no credentials, as Kubernetes probes present none, and reveal nothing but up/down.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from autoglm.server import call_facts
from autoglm.server.api.calls import Generations
from autoglm.server.api.openai import serving
from autoglm.server.api.validation import request_id_of
from autoglm.server.audit.interceptor import record_of
from autoglm.server.audit.sink import AuditSink
from autoglm.server.errors import (
    AuditUnavailable,
    InvalidArgument,
    NotFound,
    RequestTooLarge,
    ServiceError,
    code_of,
    reason_of,
)
from autoglm.server.security.auth import Principal, authenticate_bearer
from autoglm.server.security.bearer_tokens import TokenStore
from autoglm.server.security.credentials import Credentials
from autoglm.server.telemetry import tracing

# Where the TLS layer leaves the client certificate's identity in the ASGI scope (http_server.py).
PEER_IDENTITY = "autoglm.peer_identity"
OWNER = "autoglm"


@dataclass(frozen=True)
class FrontDoor:
    generations: Generations
    tokens: TokenStore | Credentials | None  # None = insecure dev mode (loopback, no tokens)
    max_body_bytes: int
    ready: Callable[[], bool]  # the deep readiness of gRPC health (engine/health.py)
    on_auth_failure: Callable[[str], None]
    # Where the records of calls no generation recorded go (the generations' own sink).
    audit: AuditSink = field(default_factory=lambda: AuditSink(None))
    # `created` of /v1/models entries: when this façade started.
    started: int = field(default_factory=lambda: int(time.time()))


def build_app(door: FrontDoor) -> Starlette:
    no_route = _no_route_handler(door)

    async def chat(request: Request) -> Response:
        return await _generate(door, serving.CHAT, request)

    async def completions(request: Request) -> Response:
        return await _generate(door, serving.COMPLETIONS, request)

    async def models(request: Request) -> Response:
        await _prepare(door, request)
        return _traced(
            request,
            "/v1/models",
            "models.list",
            lambda principal: _models(door, principal),
            door,
        )

    async def model(request: Request) -> Response:
        await _prepare(door, request)
        name = request.path_params["model"]
        return _traced(
            request,
            "/v1/models/{model}",
            "models.get",
            lambda principal: _model(door, principal, name),
            door,
        )

    async def healthz(_request: Request) -> Response:
        return Response(b'{"status":"alive"}', media_type=serving.JSON)

    async def readyz(_request: Request) -> Response:
        if door.ready():
            return Response(b'{"status":"ready"}', media_type=serving.JSON)
        return Response(b'{"status":"not ready"}', status_code=503, media_type=serving.JSON)

    return Starlette(
        routes=[
            HttpRoute("/v1/chat/completions", chat, methods=["POST"]),
            HttpRoute("/v1/completions", completions, methods=["POST"]),
            HttpRoute("/v1/models", models, methods=["GET"]),
            HttpRoute("/v1/models/{model:path}", model, methods=["GET"]),
            HttpRoute("/healthz", healthz, methods=["GET"]),
            HttpRoute("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={404: no_route, 405: no_route},
    )


def _no_route_handler(door: FrontDoor) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def no_route(request: Request, exc: Exception) -> Response:
        response = _no_route(request, exc)
        # Probing for routes is worth a line of the audit log (the path bounded).
        what = f"{request.method} {request.url.path}"[:200]
        facts = call_facts.begin("openai", what, _peer(request))
        facts.reason = "route" if response.status_code == 404 else "method"
        code = (
            grpc.StatusCode.NOT_FOUND
            if response.status_code == 404
            else (grpc.StatusCode.UNIMPLEMENTED)
        )
        door.audit.submit(record_of(facts, code, tracing.current_trace_id()))
        return response

    return no_route


def _no_route(request: Request, exc: Exception) -> Response:
    """Unknown routes and methods in OpenAI's error shape (a client probing for
    `/v1/embeddings` learns it is not served here, in the form its SDK reads)."""
    status = getattr(exc, "status_code", 404)
    what = "route" if status == 404 else "method"
    body = {
        "error": {
            "message": f"{what} not served: {request.method} {request.url.path}",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found" if status == 404 else "method_not_allowed",
        }
    }
    headers = dict(getattr(exc, "headers", None) or {})  # 405 lists Allow
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type=serving.JSON
    )


def _headers(request: Request) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


async def _prepare(door: FrontDoor, request: Request) -> None:
    """Fetch the signing key of a JWT whose `kid` is new (a key just rotated in at the
    provider) before the synchronous check, so it passes at once, as on gRPC."""
    if isinstance(door.tokens, Credentials):
        await door.tokens.prepare(request.headers.get("authorization"))


def _authenticate(door: FrontDoor, request: Request, scope: str) -> Principal | None:
    if door.tokens is None:
        return None
    return authenticate_bearer(
        door.tokens,
        request.headers.get("authorization"),
        scope=scope,
        cert_identity=request.scope.get("extensions", {}).get(PEER_IDENTITY),
        on_failure=door.on_auth_failure,
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"body: {declared} bytes exceed the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"body: more than the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _peer(request: Request) -> str | None:
    """The caller's address, spelled as gRPC spells its peers."""
    client = request.client
    if client is None:
        return None
    return (
        f"ipv6:[{client.host}]:{client.port}"
        if ":" in client.host
        else (f"ipv4:{client.host}:{client.port}")
    )


def _audit_refused(door: FrontDoor, facts: call_facts.CallFacts, exc: BaseException) -> None:
    """The audit record of a call refused before any generation took it over."""
    code = grpc.StatusCode.CANCELLED if isinstance(exc, ClientDisconnect) else code_of(exc)
    reason = reason_of(exc)
    if reason is not None:
        call_facts.note_reason(reason)
    door.audit.submit(record_of(facts, code, tracing.current_trace_id()))


async def _generate(door: FrontDoor, route: serving.Route, request: Request) -> Response:
    span = tracing.http_server_span("POST", request.url.path, _headers(request))
    span.attach()  # serving.serve ends (and detaches) it when the answer is out
    facts = call_facts.begin("openai", route.rpc, _peer(request))
    raw_id = request.headers.get("x-request-id", "")
    rid = request_id_of(raw_id) if raw_id else ""
    try:
        await _prepare(door, request)
        principal = _authenticate(door, request, "generate")
        body = await _read_body(request, door.max_body_bytes)
    except ServiceError as exc:
        _audit_refused(door, facts, exc)
        response = serving.error_response(exc, request_id=rid or "-")
        span.end(response.status_code)
        return response
    except ClientDisconnect as exc:
        _audit_refused(door, facts, exc)
        span.end(499)
        return Response(status_code=499)
    if raw_id and raw_id != rid:
        exc = InvalidArgument([("x-request-id", "must be 1..64 characters of [A-Za-z0-9._:-]")])
        _audit_refused(door, facts, exc)
        response = serving.error_response(exc, request_id=rid)
        span.end(response.status_code)
        return response
    # From here the generation (calls.py) writes the call's audit record.
    return await serving.serve(
        route,
        door.generations,
        body,
        principal=principal,
        request_id=rid,
        span=span,
        disconnected=lambda: _disconnected(request),
    )


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _traced(
    request: Request,
    route: str,
    method: str,
    answer: Callable[[Principal | None], bytes],
    door: FrontDoor,
) -> Response:
    span = tracing.http_server_span("GET", route, _headers(request))
    span.attach()
    facts = call_facts.begin("openai", method, _peer(request))
    try:
        try:
            refusal = door.audit.refusal()
            if refusal is not None:
                call_facts.note_reason("audit_unavailable")
                raise AuditUnavailable(refusal)
            payload = answer(_authenticate(door, request, "models:read"))
        except ServiceError as exc:
            _audit_refused(door, facts, exc)
            response = serving.error_response(exc, request_id="-")
        else:
            door.audit.submit(record_of(facts, grpc.StatusCode.OK, tracing.current_trace_id()))
            response = Response(payload, media_type=serving.JSON)
        span.end(response.status_code)
        return response
    finally:
        span.detach()


def _model_entry(
    door: FrontDoor, name: str, context: int, parent: str | None = None
) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": name,
        "object": "model",
        "created": door.started,
        "owned_by": OWNER,
        "max_model_len": context,
    }
    if parent is not None:  # a LoRA adapter: its base, as vLLM lists adapters (model_names.py)
        entry["parent"] = parent
    return entry


def _entries(door: FrontDoor, principal: Principal | None) -> list[dict[str, object]]:
    """Each visible model, then its visible adapters (by their own names)."""
    data = []
    for m in door.generations.visible_models(principal):
        context = m.limits.max_context
        data.append(_model_entry(door, m.spec.name, context))
        data.extend(
            _model_entry(door, a.name, context, parent=m.spec.name)
            for a in door.generations.visible_adapters(m.spec.name, principal)
        )
    return data


def _models(door: FrontDoor, principal: Principal | None) -> bytes:
    return orjson.dumps({"object": "list", "data": _entries(door, principal)})


def _model(door: FrontDoor, principal: Principal | None, name: str) -> bytes:
    base, sep, adapter = name.partition(":")
    for entry in _entries(door, principal):
        if entry["id"] == name:
            return orjson.dumps(entry)
        if sep and entry["id"] == adapter and entry.get("parent") == base:
            return orjson.dumps(entry | {"id": name})  # BASE:ADAPTER, as asked
    # The same answer for a model that does not exist and one this token may not see.
    raise NotFound(f"model: no model named {name!r}", field="model")
