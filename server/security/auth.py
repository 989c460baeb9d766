"""Bearer-token authentication as a grpc.aio server interceptor.

A refused call gets a handler of the same RPC kind that aborts with UNAUTHENTICATED (the pattern
of grpc's `examples/python/auth/token_based_auth_server.py`). An accepted call gets the original
handler wrapped so that the servicer can read the caller with `current_principal()`.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

from autoglm.server import call_facts
from autoglm.server.errors import PermissionDenied, Unauthenticated
from autoglm.server.grpc_handlers import rewrap
from autoglm.server.security.bearer_tokens import AuthError, AuthFailure, TokenRecord, TokenStore
from autoglm.server.security.credentials import Credentials, averify
from autoglm.server.security.limits import PrincipalLimits
from autoglm.server.security.tls import peer_identity
from autoglm.server.telemetry import tracing

__all__ = [
    "ADMIN_SCOPE",
    "DEFAULT_METHOD_SCOPES",
    "DEFAULT_OPEN_METHODS",
    "AuthInterceptor",
    "Principal",
    "authenticate_bearer",
    "current_principal",
]

logger = logging.getLogger(__name__)

# Load balancers and orchestrators probe health without credentials.
DEFAULT_OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

_MESSAGES: dict[AuthFailure, str] = {
    "missing": "missing bearer token (metadata 'authorization: Bearer <token>')",
    "malformed": "malformed bearer token",
    "unknown": "unknown bearer token",
    "revoked": "bearer token revoked",
    "expired": "bearer token expired",
    # JWTs of the identity provider (oidc.py); never the token or a claim's value.
    "jwt_invalid": "invalid JWT bearer token (encoding or signature)",
    "jwt_alg": "JWT bearer token signed with an algorithm that is not allowed",
    "jwt_key_unknown": "JWT bearer token signed by a key the issuer does not publish (kid)",
    "jwt_issuer": "JWT bearer token from another issuer (iss)",
    "jwt_audience": "JWT bearer token meant for another audience (aud)",
    "jwt_expired": "JWT bearer token expired (exp)",
    "jwt_not_yet_valid": "JWT bearer token not valid yet (nbf/iat)",
    "jwt_claims": "JWT bearer token lacks a required claim (exp, or the principal's claim)",
}


# An HTTP caller sends a header, and OpenAI clients call the token their API key.
_HTTP_MESSAGES: dict[AuthFailure, str] = {
    "missing": "missing API key (header 'Authorization: Bearer <token>')",
}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of the current RPC."""

    token_id: str
    name: str
    scopes: frozenset[str]
    models: frozenset[str]  # empty = every model
    cert_identity: str | None = None  # SAN (or CN) of the client certificate, None without mTLS
    bound_identity: str | None = None  # the token only works with this certificate identity
    limits: PrincipalLimits | None = None
    roles: frozenset[str] = frozenset()  # roles.py; `scopes` already includes theirs
    adapters: frozenset[str] = frozenset()  # LoRA adapters it may use; empty = every adapter

    @classmethod
    def from_record(cls, record: TokenRecord) -> Principal:
        return cls(
            token_id=record.id,
            name=record.principal,
            scopes=record.scopes,
            models=record.models,
            bound_identity=record.bound_identity,
            limits=record.limits,
            roles=record.roles,
            adapters=record.adapters,
        )

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    def allows_adapter(self, adapter: str) -> bool:
        return not self.adapters or adapter in self.adapters


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "autoglm_principal", default=None
)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled; None in open methods and outside RPCs."""
    return _current.get()


# The scope each method needs ("admin" has them all). A method not listed here needs "admin":
# whatever is added to the server later is closed until someone decides who may call it.
ADMIN_SCOPE = "admin"
DEFAULT_METHOD_SCOPES: Mapping[str, str] = {
    "/autoglm.v1.TextGeneration/Generate": "generate",
    "/autoglm.v1.TextGeneration/GenerateStream": "generate",
    "/autoglm.v1.TextGeneration/CountTokens": "generate",
    "/autoglm.v1.TextGeneration/ListModels": "models:read",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "models:read",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "models:read",
}


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        store: TokenStore | Credentials,
        *,
        open_methods: frozenset[str] = DEFAULT_OPEN_METHODS,
        method_scopes: Mapping[str, str] = DEFAULT_METHOD_SCOPES,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._open_methods = open_methods
        self._method_scopes = method_scopes
        self._on_failure = on_failure or (lambda _reason: None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._open_methods:
            # None: no such method; grpc answers UNIMPLEMENTED.
            return handler
        try:
            token = _bearer_token(handler_call_details.invocation_metadata)
            # A stat() at most every reload_interval and one SHA-256: cheap enough for the loop.
            # Not recorded here: interceptors run before the RPC's server span exists;
            # `_auth_attributes` puts the decision on that span from inside the RPC instead.
            # JWTs (Credentials with an issuer) may wait for a JWKS refetch: off the loop.
            record = await averify(self._store, token)
        except AuthError as err:
            logger.info("unauthenticated call: method=%s reason=%s", method, err.reason)
            self._on_failure(err.reason)
            return _abort_handler(
                handler, grpc.StatusCode.UNAUTHENTICATED, _MESSAGES[err.reason], err.reason
            )
        needed = self._method_scopes.get(method, ADMIN_SCOPE)
        if needed not in record.scopes and ADMIN_SCOPE not in record.scopes:
            logger.info("permission denied: method=%s token=%s scope=%s", method, record.id, needed)
            self._on_failure("scope")
            return _abort_handler(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                _lacks_scope(record, needed, f" for {method}"),
                "scope",
                Principal.from_record(record),
            )
        return _with_principal(handler, Principal.from_record(record))


def authenticate_bearer(
    store: TokenStore | Credentials,
    authorization: str | None,
    *,
    scope: str,
    cert_identity: str | None,
    on_failure: Callable[[str], None] | None = None,
) -> Principal:
    """The same decision as `AuthInterceptor`, for a front door without gRPC metadata (HTTP):
    one `Authorization` header value in, the principal out, or Unauthenticated /
    PermissionDenied with the same messages. Certificate binding is checked here too."""
    fail = on_failure or (lambda _reason: None)
    try:
        token = _bearer_token([("authorization", authorization)] if authorization else None)
        record = store.verify(token)
    except AuthError as err:
        logger.info("unauthenticated call: scope=%s reason=%s", scope, err.reason)
        fail(err.reason)
        call_facts.note_reason(err.reason)
        _auth_attributes("UNAUTHENTICATED")
        raise Unauthenticated(_HTTP_MESSAGES.get(err.reason, _MESSAGES[err.reason])) from None
    if scope not in record.scopes and ADMIN_SCOPE not in record.scopes:
        logger.info("permission denied: token=%s scope=%s", record.id, scope)
        fail("scope")
        call_facts.note_reason("scope")
        _auth_attributes("PERMISSION_DENIED")
        raise PermissionDenied(_lacks_scope(record, scope, " here"))
    principal = replace(Principal.from_record(record), cert_identity=cert_identity)
    refusal = _binding_refusal(principal)
    _auth_attributes("UNAUTHENTICATED" if refusal else "OK", principal)
    call_facts.note_principal(principal)
    if refusal is not None:
        fail("cert_binding")
        call_facts.note_reason("cert_binding")
        raise Unauthenticated(refusal)
    return principal


def _lacks_scope(record: TokenRecord, needed: str, where: str) -> str:
    if record.id.startswith("jwt:") and not record.roles:
        # A valid identity-provider token that the claim mapping gives nothing (oidc.py).
        return f"no role maps from this token's claims (the scope {needed!r} is needed{where})"
    return f"this token lacks the scope {needed!r} needed{where}"


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None
    if len(values) > 1 or not isinstance(values[0], str):
        raise AuthError("malformed")
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110 §11.1)
        raise AuthError("malformed")
    return token.strip() or None


def _abort_handler(
    handler: grpc.RpcMethodHandler,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    principal: Principal | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that fails with `code`.

    No request deserializer: an unauthenticated caller's bytes are never parsed.
    """

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        _auth_attributes(code.name)
        _note_refusal(reason, principal, context)  # for the call's audit record
        await context.abort(code, message)

    async def abort_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        # An async generator, as a streaming behaviour must be for wrappers that iterate it
        # (the OTel server interceptor does `async for` over it).
        _auth_attributes(code.name)
        _note_refusal(reason, principal, context)
        await context.abort(code, message)
        yield  # pragma: no cover - never reached: abort raises

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


def _with_principal(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped to set `current_principal()` inside the call.

    Setting the contextvar in `intercept_service` alone is not enough: in grpcio 1.85 it does reach
    async handlers (same task), but not sync handlers, which grpc.aio runs in its
    `migration_thread_pool` via run_in_executor (no context copy). Wrapping also gives access to
    the servicer context, hence to the client certificate.
    """
    return rewrap(handler, lambda behavior: _wrap_behavior(behavior, principal))


def _wrap_behavior(behavior: Callable[..., Any], principal: Principal) -> Callable[..., Any]:
    # grpc.aio picks how to run a behaviour (await, async-iterate, executor) by inspecting it, so
    # each wrapper must be the same kind of callable as the function it wraps.
    if inspect.isasyncgenfunction(behavior):

        async def async_gen(request: Any, context: Any) -> Any:
            # No reset: every aio RPC runs in its own task with its own context copy, and a reset
            # in `finally` would raise if the generator were finalized from another context.
            bound = _bind(principal, context)
            refusal = _binding_refusal(bound)
            _auth_attributes("UNAUTHENTICATED" if refusal else "OK", bound)
            _note(bound, refusal)
            if refusal is not None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
            _current.set(bound)
            async for item in behavior(request, context):
                yield item

        return async_gen

    if inspect.iscoroutinefunction(behavior):

        async def coroutine(request: Any, context: Any) -> Any:
            bound = _bind(principal, context)
            refusal = _binding_refusal(bound)
            _auth_attributes("UNAUTHENTICATED" if refusal else "OK", bound)
            _note(bound, refusal)
            if refusal is not None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
            token = _current.set(bound)
            try:
                return await behavior(request, context)
            finally:
                _current.reset(token)

        return coroutine

    if inspect.isgeneratorfunction(behavior):

        def sync_gen(request: Any, context: Any) -> Any:
            # Each next() may run on a different executor thread: step the generator inside one
            # private context so the principal is visible and never leaks into the thread.
            ctx = contextvars.copy_context()
            ctx.run(_current.set, _bind(principal, context))
            iterator = ctx.run(behavior, request, context)
            try:
                while True:
                    try:
                        item = ctx.run(next, iterator)
                    except StopIteration:
                        return
                    yield item
            finally:
                ctx.run(iterator.close)  # run the servicer's cleanup on cancellation too

        return sync_gen

    def sync(request: Any, context: Any) -> Any:
        ctx = contextvars.copy_context()
        ctx.run(_current.set, _bind(principal, context))
        return ctx.run(behavior, request, context)

    return sync


def _note_refusal(reason: str, principal: Principal | None, context: Any) -> None:
    """A refusal's cause (and the known caller, for a scope refusal) on the call's facts, which
    audit/interceptor.py writes into the call's record."""
    call_facts.note_reason(reason)
    if principal is not None:
        call_facts.note_principal(_bind(principal, context))


def _note(principal: Principal, refusal: str | None) -> None:
    """The caller (and a binding refusal) on the call's facts, for its audit record."""
    call_facts.note_principal(principal)
    if refusal is not None:
        call_facts.note_reason("cert_binding")


def _bind(principal: Principal, context: Any) -> Principal:
    return replace(principal, cert_identity=peer_identity(context))


def _auth_attributes(result: str, principal: Principal | None = None) -> None:
    """The auth decision on the RPC's server span (the current span in the behaviour): result,
    principal (`enduser.id`, the OTel attribute for the caller of the request), token id, client
    certificate identity; never the token. Attributes, not a span of their own: a decision has
    no duration worth a span (verification is one stat() and one SHA-256)."""
    attrs: dict[str, str] = {"autoglm.auth.result": result}
    if principal is not None:
        attrs |= {"enduser.id": principal.name, "autoglm.auth.token_id": principal.token_id}
        if principal.cert_identity:
            attrs["autoglm.auth.cert_identity"] = principal.cert_identity
    tracing.annotate(attrs)


def _binding_refusal(principal: Principal) -> str | None:
    """Why a certificate-bound token may not be used on this connection (None = it may).

    A stolen token is useless without the private key of the certificate it is bound to.
    Only async handlers are checked: the façade's servicer is async throughout.
    """
    if principal.bound_identity is None or principal.bound_identity == principal.cert_identity:
        return None
    logger.info("token %s used with another client certificate", principal.token_id)
    return "this bearer token is bound to another client certificate"
