"""Transport security both sides of the wire share: TLS credentials, bearer tokens and the files holding them.

The token travels as ``authorization: Bearer <token>`` metadata (RFC 6750), so
any gRPC client can send it (``buf curl -H``, ``grpcurl -H``). It is only as
secret as the channel: use it with TLS unless the server is bound to loopback.
The server's check lives in :mod:`movierec.server.auth`; this module imports
nothing but gRPC, so the client library stays free of server code.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from movierec.errors import MovierecError

AUTHORIZATION_KEY = "authorization"
BEARER_SCHEME = "bearer"


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying ``token``; works on plaintext loopback channels too.

    (``grpc.access_token_call_credentials`` sends the same header but gRPC only
    allows call credentials on secure channels.)
    """
    return ((AUTHORIZATION_KEY, f"Bearer {checked_token(token)}"),)


def read_token_file(path: Path) -> str:
    """The token stored in ``path`` (one line; surrounding whitespace ignored), for ``--token-file``.

    A file keeps the secret out of the process list and shell history, where a
    ``--token`` value would end up.
    """
    text = _read_text(path, "token file")
    try:
        return checked_token(text.strip())
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


def checked_token(token: str) -> str:
    """``token`` itself when it can travel in a header; ValueError otherwise."""
    if not token or any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise ValueError("the bearer token must be non-empty printable ASCII without spaces")
    return token


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
