"""The server's bearer-token check (the shared TLS and token helpers are in :mod:`movierec.security`).

Health checks and reflection stay reachable without a token by default, so
load balancers and generic tools can probe a server they hold no secret for;
reflection only reveals the public ``.proto`` schema. Pass ``public_services=()``
to close them too.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

import grpc

from movierec.security import AUTHORIZATION_KEY, BEARER_SCHEME, checked_token
from movierec.security import (
    read_token_file as read_token_file,  # for clients/cli/query_cmd.py until it imports movierec.security
)

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
DEFAULT_PUBLIC_SERVICES = (HEALTH_SERVICE, *REFLECTION_SERVICES)

if TYPE_CHECKING:  # generic in the type stubs only; subscripting it at run time fails
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

MISSING_TOKEN = "missing bearer token: send metadata 'authorization: Bearer <token>'"
MALFORMED_TOKEN = "malformed authorization metadata: expected 'Bearer <token>'"
WRONG_TOKEN = "invalid bearer token"


class BearerTokenInterceptor(_ServerInterceptor):
    """Answers UNAUTHENTICATED, before any handler runs, to calls without the configured token.

    The comparison is constant-time (``hmac.compare_digest`` over SHA-256
    digests, so not even the token's length shows) and response timing does
    not reveal how much of a guess was right. Calls to
    ``public_services`` (full service names) pass unchecked. An unknown method
    is left to gRPC (UNIMPLEMENTED).
    """

    def __init__(self, token: str, *, public_services: Collection[str] = DEFAULT_PUBLIC_SERVICES) -> None:
        self._digest = hashlib.sha256(checked_token(token).encode()).digest()
        self._public = frozenset(public_services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or _service_of(handler_call_details.method) in self._public:
            return handler
        problem = self._problem(handler_call_details.invocation_metadata)
        return handler if problem is None else _denying_handler(handler, problem)

    def _problem(self, metadata: Any) -> str | None:
        """Why the call is refused, or None when it carries the right token."""
        value = next((v for k, v in metadata or () if k == AUTHORIZATION_KEY), None)
        if value is None:
            return MISSING_TOKEN
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, presented = text.strip().partition(" ")
        if scheme.lower() != BEARER_SCHEME or not presented.strip():
            return MALFORMED_TOKEN
        digest = hashlib.sha256(presented.strip().encode("latin-1", "replace")).digest()
        if not hmac.compare_digest(digest, self._digest):
            return WRONG_TOKEN
        return None


def _service_of(method: str) -> str:
    """``/package.Service/Method`` -> ``package.Service``."""
    return method.lstrip("/").partition("/")[0]


def _denying_handler(handler: grpc.RpcMethodHandler[Any, Any], details: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same streaming kind that aborts at once; the request is never deserialised."""

    async def deny(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    async def deny_stream(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        # grpc.aio runs response-streaming behaviours as async generators; this one ends before its first message.
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)
        yield

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)
