"""Bearer-token interceptor and TLS credentials, against a tiny in-process grpc.aio echo server."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from movierec.errors import MovierecError
from movierec.security import bearer_metadata, channel_credentials, read_token_file, server_credentials
from movierec.server.auth import MALFORMED_TOKEN, MISSING_TOKEN, WRONG_TOKEN, BearerTokenInterceptor

TOKEN = "s3cret-Token_42"
ECHO = "/test.Echo/Unary"
ECHO_STREAM = "/test.Echo/Stream"
HEALTH = "/grpc.health.v1.Health/Check"


async def _echo(request: bytes, _context: Any) -> bytes:
    return request


async def _echo_stream(requests: AsyncIterator[bytes], _context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _first(requests: AsyncIterator[bytes], _context: Any) -> bytes:
    async for request in requests:
        return request
    return b""


async def _repeat(request: bytes, _context: Any) -> AsyncIterator[bytes]:
    yield request


def _handlers() -> list[grpc.GenericRpcHandler[Any, Any]]:
    return [
        grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(_echo),
                "Stream": grpc.stream_stream_rpc_method_handler(_echo_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(_first),
                "ServerStream": grpc.unary_stream_rpc_method_handler(_repeat),
            },
        ),
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(_echo)}
        ),
    ]


@asynccontextmanager
async def _server(
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (), credentials: grpc.ServerCredentials | None = None
) -> AsyncIterator[int]:
    server = grpc.aio.server(interceptors=list(interceptors))
    server.add_generic_rpc_handlers(_handlers())
    address = "127.0.0.1:0" if credentials is None else "localhost:0"
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(grace=None)


@asynccontextmanager
async def _plain_channel(
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]],
) -> AsyncIterator[grpc.aio.Channel]:
    """A plaintext loopback channel to a fresh echo server running ``interceptors``."""
    async with _server(interceptors) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel


async def _call(channel: grpc.aio.Channel, method: str, metadata: Sequence[tuple[str, str]] = ()) -> bytes:
    response: bytes = await channel.unary_unary(method, None, None)(b"ping", metadata=tuple(metadata), timeout=10)
    return response


async def _code_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


# -- bearer token -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "code", "details"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED, WRONG_TOKEN),
        ((("authorization", f"Bearer {TOKEN}x"),), grpc.StatusCode.UNAUTHENTICATED, WRONG_TOKEN),
        ((("authorization", TOKEN),), grpc.StatusCode.UNAUTHENTICATED, MALFORMED_TOKEN),
        ((("authorization", f"Basic {TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED, MALFORMED_TOKEN),
        ((("authorization", f"bearer {TOKEN}"),), grpc.StatusCode.OK, ""),
        (bearer_metadata(TOKEN), grpc.StatusCode.OK, ""),
    ],
)
def test_unary_calls_need_the_right_token(
    metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode, details: str
) -> None:
    async def scenario() -> None:
        async with _plain_channel([BearerTokenInterceptor(TOKEN)]) as channel:
            assert await _code_of(_call(channel, ECHO, metadata)) == (code, details)

    _run(scenario)


async def _any_kind(channel: grpc.aio.Channel, kind: str, metadata: Sequence[tuple[str, str]]) -> list[bytes]:
    """Call the echo method of streaming ``kind`` with b"a"; the messages that came back."""
    options: dict[str, Any] = {"metadata": tuple(metadata), "timeout": 10}
    if kind == "Unary":
        return [await channel.unary_unary(ECHO, None, None)(b"a", **options)]
    if kind == "ClientStream":
        return [await channel.stream_unary("/test.Echo/ClientStream", None, None)(iter([b"a"]), **options)]
    if kind == "ServerStream":
        return [m async for m in channel.unary_stream("/test.Echo/ServerStream", None, None)(b"a", **options)]
    return [m async for m in channel.stream_stream(ECHO_STREAM, None, None)(iter([b"a"]), **options)]


@pytest.mark.parametrize("kind", ["Unary", "ClientStream", "ServerStream", "Stream"])
def test_every_streaming_kind_is_checked_and_passes_with_the_token(kind: str) -> None:
    async def scenario() -> None:
        async with _plain_channel([BearerTokenInterceptor(TOKEN)]) as channel:
            code, details = await _code_of(_any_kind(channel, kind, ()))
            assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN)
            assert await _any_kind(channel, kind, bearer_metadata(TOKEN)) == [b"a"]

    _run(scenario)


def test_health_is_open_by_default_and_closable() -> None:
    async def scenario() -> None:
        async with _plain_channel([BearerTokenInterceptor(TOKEN)]) as channel:
            assert await _call(channel, HEALTH) == b"ping"
        async with _plain_channel([BearerTokenInterceptor(TOKEN, public_services=())]) as channel:
            assert await _code_of(_call(channel, HEALTH)) == (grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN)

    _run(scenario)


def test_unknown_methods_stay_unimplemented() -> None:
    async def scenario() -> None:
        async with _plain_channel([BearerTokenInterceptor(TOKEN)]) as channel:
            code, _ = await _code_of(_call(channel, "/test.Echo/Nope"))
            assert code == grpc.StatusCode.UNIMPLEMENTED

    _run(scenario)


@pytest.mark.parametrize("token", ["", "has space", "tab\there", "naïve"])
def test_unusable_tokens_are_refused_up_front(token: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        BearerTokenInterceptor(token)


def test_token_file_is_read_stripped_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(f"{TOKEN}\n")
    assert read_token_file(good) == TOKEN
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(MovierecError, match=f"{empty}: the bearer token must be"):
        read_token_file(empty)
    with pytest.raises(MovierecError, match="token file not found"):
        read_token_file(tmp_path / "absent")


# -- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA that signs a server and a client certificate, plus an unrelated CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, None, ca_key)
    files: dict[str, bytes] = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{role}.pem"] = _certificate(role, key, ca, ca_key).public_bytes(serialization.Encoding.PEM)
        files[f"{role}.key"] = _key_pem(key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    files["other_ca.pem"] = _certificate("other CA", other_key, None, other_key).public_bytes(
        serialization.Encoding.PEM
    )
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other_ca.pem",
    )


def test_tls_round_trip_with_a_token(pki: Pki) -> None:
    async def scenario() -> None:
        credentials = server_credentials(pki.server_cert, pki.server_key)
        async with _server([BearerTokenInterceptor(TOKEN)], credentials) as port:
            async with grpc.aio.secure_channel(f"localhost:{port}", channel_credentials(pki.ca)) as channel:
                assert await _call(channel, ECHO, bearer_metadata(TOKEN)) == b"ping"
                code, details = await _code_of(_call(channel, ECHO))
                assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN)
            composite = grpc.composite_channel_credentials(
                channel_credentials(pki.ca), grpc.access_token_call_credentials(TOKEN)
            )
            async with grpc.aio.secure_channel(f"localhost:{port}", composite) as channel:
                assert await _call(channel, ECHO) == b"ping"  # the stock call credentials speak the same header

    _run(scenario)


def test_tls_refuses_plaintext_and_untrusted_servers(pki: Pki) -> None:
    async def scenario() -> None:
        async with _server(credentials=server_credentials(pki.server_cert, pki.server_key)) as port:
            async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
                code, _ = await _code_of(_call(channel, ECHO))
                assert code == grpc.StatusCode.UNAVAILABLE
            async with grpc.aio.secure_channel(f"localhost:{port}", channel_credentials(pki.other_ca)) as channel:
                code, _ = await _code_of(_call(channel, ECHO))
                assert code == grpc.StatusCode.UNAVAILABLE

    _run(scenario)


def test_mutual_tls_requires_a_client_certificate(pki: Pki) -> None:
    async def scenario() -> None:
        credentials = server_credentials(pki.server_cert, pki.server_key, client_ca_file=pki.ca)
        async with _server(credentials=credentials) as port:
            async with grpc.aio.secure_channel(f"localhost:{port}", channel_credentials(pki.ca)) as channel:
                code, _ = await _code_of(_call(channel, ECHO))
                assert code == grpc.StatusCode.UNAVAILABLE
            with_cert = channel_credentials(pki.ca, pki.client_cert, pki.client_key)
            async with grpc.aio.secure_channel(f"localhost:{port}", with_cert) as channel:
                assert await _call(channel, ECHO) == b"ping"

    _run(scenario)


def test_bad_credential_files_are_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(MovierecError, match=f"{missing}: PEM certificate file not found"):
        server_credentials(missing, pki.server_key)
    with pytest.raises(MovierecError, match=f"{pki.server_cert}: not a PEM private key"):
        server_credentials(pki.server_cert, pki.server_cert)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\xff\xfe not pem")
    with pytest.raises(MovierecError, match=f"{garbage}: cannot read"):
        channel_credentials(garbage)
    with pytest.raises(MovierecError, match="needs both"):
        channel_credentials(pki.ca, cert_file=pki.client_cert)
