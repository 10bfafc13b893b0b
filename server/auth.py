"""Transport security for the gRPC server: TLS credentials and a bearer-token check.

The token travels as ``authorization: Bearer <token>`` metadata (RFC 6750), so
any gRPC client can send it (``buf curl -H``, ``grpcurl -H``). It is only as
secret as the channel: use it with TLS unless the server is bound to loopback.

Health checks and reflection stay reachable without a token by default, so
load balancers and generic tools can probe a server they hold no secret for;
reflection only reveals the public ``.proto`` schema. Pass ``public_services=()``
to close them too.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from movierec.errors import MovierecError

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
DEFAULT_PUBLIC_SERVICES = (HEALTH_SERVICE, *REFLECTION_SERVICES)
AUTHORIZATION_KEY = "authorization"
_SCHEME = "bearer"

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
        self._digest = hashlib.sha256(_checked_token(token).encode()).digest()
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
        if scheme.lower() != _SCHEME or not presented.strip():
            return MALFORMED_TOKEN
        digest = hashlib.sha256(presented.strip().encode("latin-1", "replace")).digest()
        if not hmac.compare_digest(digest, self._digest):
            return WRONG_TOKEN
        return None


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying ``token``; works on plaintext loopback channels too.

    (``grpc.access_token_call_credentials`` sends the same header but gRPC only
    allows call credentials on secure channels.)
    """
    return ((AUTHORIZATION_KEY, f"Bearer {_checked_token(token)}"),)


def read_token_file(path: Path) -> str:
    """The token stored in ``path`` (one line; surrounding whitespace ignored), for ``--token-file``.

    A file keeps the secret out of the process list and shell history, where a
    ``--token`` value would end up.
    """
    text = _read_text(path, "token file")
    try:
        return _checked_token(text.strip())
    except ValueError as exc:
        raise MovierecError(str(exc), path=path) from None


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> grpc.ServerCredentials:
    """TLS for ``--tls-cert``/``--tls-key``; with ``client_ca_file`` clients must present a cert it signed (mTLS)."""
    cert = _read_pem(cert_file, "CERTIFICATE")
    key = _read_pem(key_file, "PRIVATE KEY")
    if client_ca_file is None:
        return grpc.ssl_server_credentials([(key, cert)])
    client_ca = _read_pem(client_ca_file, "CERTIFICATE")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)


def channel_credentials(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS: trust ``ca_file`` (system roots when None); ``cert_file`` + ``key_file`` for mTLS."""
    if (cert_file is None) != (key_file is None):
        raise MovierecError("a client certificate needs both --tls-client-cert and --tls-client-key")
    root = None if ca_file is None else _read_pem(ca_file, "CERTIFICATE")
    key = None if key_file is None else _read_pem(key_file, "PRIVATE KEY")
    chain = None if cert_file is None else _read_pem(cert_file, "CERTIFICATE")
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


def _service_of(method: str) -> str:
    """``/package.Service/Method`` -> ``package.Service``."""
    return method.lstrip("/").partition("/")[0]


def _checked_token(token: str) -> str:
    if not token or any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise ValueError("the bearer token must be non-empty printable ASCII without spaces")
    return token


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


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise MovierecError(f"{what} not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MovierecError(f"cannot read the {what} ({exc})", path=path) from None


def _read_pem(path: Path, label: str) -> bytes:
    """The PEM file's bytes, refusing anything without a ``-----BEGIN ...{label}-----`` block."""
    text = _read_text(path, f"PEM {label.lower()} file")
    if f"{label}-----" not in text or "-----BEGIN " not in text:
        raise MovierecError(f"not a PEM {label.lower()} (no '-----BEGIN ... {label}-----' block)", path=path)
    return text.encode("ascii")
