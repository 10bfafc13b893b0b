"""The HTTP/JSON face of the recommender (``recctl serve --http-port``): FastAPI on uvicorn, beside gRPC.

Callers that speak plain HTTP (the seed's ``POST /recommend`` with
``{"user_id", "k"}``, ``GET /health``, a browser on ``/docs``) get the same
answers as gRPC callers, because every request is answered by the engine that
:class:`~movierec.server.state.ServingState` publishes right now, through the
same ``engine.recommend`` / ``engine.similar_items`` calls the gRPC servicer
makes; a hot swap reaches both at once. Like the servicer, handlers run the
search on the event loop (it costs less than a hop to a thread), and uvicorn
runs as a task on the loop of the ``grpc.aio`` server: one process, one loop.

Errors keep the gRPC meaning, mapped to HTTP statuses (:data:`HTTP_STATUS`),
with one JSON body shape (:class:`ErrorBody`): the engine's INVALID_ARGUMENT
is 400 with the very message a gRPC caller reads; a body that is not JSON at
all is 400; JSON that does not fit the schema (a string for ``k``, an unknown
field, a missing ``user_id``) is 422; a body larger than the largest valid
request is 413 before it is parsed.

With ``--token-file`` every route except ``/health``, ``/openapi.json`` and the
docs needs ``Authorization: Bearer <token>`` (the token of the gRPC port); with
``--tls-cert`` the port speaks HTTPS only, with the same certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Annotated, Any

import grpc
import uvicorn
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from movierec.security import BEARER_SCHEME, read_token_file
from movierec.server.errors import RequestError, client_safe
from movierec.server.limits import Limits
from movierec.server.metrics import HttpMetricsMiddleware
from movierec.server.state import ServingState
from movierec.v1 import recommender_pb2 as pb

if TYPE_CHECKING:
    from movierec.server.app import RecommenderServer

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# gRPC status -> HTTP status of the same meaning (anything else is a server fault: 500).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# HTTP statuses FastAPI/Starlette raise themselves, named like gRPC codes in the error body.
_CODE_OF_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED"}
# Body bytes the largest valid request can take: a fixed allowance for the scalar fields and request_id, plus
# each exclusion as a JSON number (a negative int64 is 20 characters, then ", ") and each genre name.
_BODY_BASE_BYTES = 64 * 1024
_BODY_BYTES_PER_ID = 24
_BODY_BYTES_PER_GENRE = 72

_SERVICE = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
METRICS_ROUTES = {
    "/recommend": f"/{_SERVICE}/Recommend",
    "/similar": f"/{_SERVICE}/SimilarItems",
    "/info": f"/{_SERVICE}/GetInfo",
    "/health": "/grpc.health.v1.Health/Check",
}
"""The paths counted in the server's metrics, each under the gRPC method it answers like (grpc_type="http")."""

MISSING_TOKEN = "missing bearer token: send the header 'Authorization: Bearer <token>'"
MALFORMED_TOKEN = "malformed Authorization header: expected 'Bearer <token>'"
WRONG_TOKEN = "invalid bearer token"


# ---------------------------------------------------------------- the JSON schema (also the OpenAPI document)

Int64 = Annotated[int, Field(strict=True, ge=INT64[0], le=INT64[1])]
Year = Annotated[int | None, Field(strict=True, ge=INT32[0], le=INT32[1])]


class _Body(BaseModel):
    """Request bodies: JSON numbers for ids (no strings, no booleans) and no unknown fields (a typo is a 422)."""

    model_config = ConfigDict(extra="forbid")


class FilterFields(_Body):
    include_genres: list[str] = Field(default=[], description="only movies with at least one of these genres")
    exclude_genres: list[str] = Field(default=[], description="no movie with any of these genres")
    min_year: Year = Field(default=None, description="only movies released in or after this year")
    max_year: Year = Field(default=None, description="only movies released in or before this year")

    def item_filter(self) -> pb.ItemFilter:
        item_filter = pb.ItemFilter(include_genres=self.include_genres, exclude_genres=self.exclude_genres)
        if self.min_year is not None:
            item_filter.min_year = self.min_year
        if self.max_year is not None:
            item_filter.max_year = self.max_year
        return item_filter


class RecommendBody(FilterFields):
    user_id: Int64 = Field(description="a user the model knows, or one with recorded events")
    k: int = Field(default=10, strict=True, ge=INT32[0], le=INT32[1], description="how many movies (1..max_k)")
    exclude_item_ids: list[Int64] = Field(default=[], description="movies never to recommend in this answer")
    explain: bool = Field(default=False, description="name the user's movie behind each recommendation")
    diversity: float | None = Field(
        default=None,
        strict=True,
        description="0..1 (absent or 0: the exact top-k): re-rank the best candidates by maximal marginal "
        "relevance for movies unlike each other; exclusions and filters hold as without it",
    )
    request_id: str = Field(default="", description="echoed in the answer")

    def message(self) -> pb.RecommendRequest:
        request = pb.RecommendRequest(
            request_id=self.request_id,
            user_id=self.user_id,
            k=self.k,
            exclude_item_ids=self.exclude_item_ids,
            filter=self.item_filter(),
            explain=self.explain,
        )
        if self.diversity is not None:  # range and NaN are the engine's to refuse, as for gRPC callers
            request.diversity = self.diversity
        return request


class SimilarBody(FilterFields):
    item_id: Int64 = Field(description="the movie to find neighbours of")
    k: int = Field(default=10, strict=True, ge=INT32[0], le=INT32[1], description="how many movies (1..max_k)")
    user_id: Int64 | None = Field(default=None, description="also leave out the movies this user has seen")
    exclude_item_ids: list[Int64] = Field(default=[], description="movies never to return in this answer")
    request_id: str = Field(default="", description="echoed in the answer")

    def message(self) -> pb.SimilarItemsRequest:
        request = pb.SimilarItemsRequest(
            request_id=self.request_id,
            item_id=self.item_id,
            k=self.k,
            exclude_item_ids=self.exclude_item_ids,
            filter=self.item_filter(),
        )
        if self.user_id is not None:
            request.user_id = self.user_id
        return request


class Item(BaseModel):
    item_id: int
    score: float
    rank: int = Field(description="1-based, best first")
    title: str
    genres: list[str]
    year: int | None
    because_item_id: int | None = Field(default=None, description="with explain: the user's movie behind this one")


class ItemsAnswer(BaseModel):
    request_id: str
    model_version: str
    index_version: str
    items: list[Item]


class Health(BaseModel):
    status: str = Field(description="SERVING, or NOT_SERVING while the index loads and while draining")
    index_version: str | None = None


class ErrorBody(BaseModel):
    code: str = Field(description="the gRPC status name of the same failure (INVALID_ARGUMENT, NOT_FOUND, ...)")
    message: str
    field: str | None = Field(default=None, description="the request field at fault, when one is")


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "bad JSON, or a value the server refuses (k out of range, unknown genre, too many ids)"),
        (401, "missing or wrong bearer token (when the server has one)"),
        (404, "unknown user or movie"),
        (413, "body larger than any valid request"),
        (422, "JSON that does not fit the schema"),
        (503, "the index is still loading, or the server is draining"),
    )
}


# ---------------------------------------------------------------- the application


class HttpApi:
    """The HTTP server of one :class:`~movierec.server.app.RecommenderServer`: bound by :meth:`bind` before the
    gRPC port opens (a taken port fails before anything else starts), served by :meth:`start` as a task on
    the running loop, drained by :meth:`stop` alongside gRPC."""

    def __init__(self, server: RecommenderServer) -> None:
        config = server.config
        assert config.http_port is not None
        self._host = config.host
        self._requested_port = config.http_port
        self._reuse_port = config.reuse_port
        token = None if config.token_file is None else read_token_file(config.token_file)
        self.app = create_app(server, token=token, draining=lambda: self.draining)
        self.draining = False
        self.port: int | None = None
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        application: Callable[[_Scope, _Receive, _Send], Awaitable[None]] = _BodyLimit(
            self.app, max_body_bytes(config.limits)
        )
        if server.servicer.metrics is not None:  # outermost: refusals (413, 401, 422) are counted too
            application = HttpMetricsMiddleware(application, server.servicer.metrics, METRICS_ROUTES)
        self._uvicorn = _LoopServer(
            uvicorn.Config(
                application,
                lifespan="off",
                log_config=None,  # the process's logging stays as recctl set it up
                access_log=False,
                server_header=False,
                # Connections and requests in progress at once, as gRPC's max_concurrent_rpcs (503 beyond).
                limit_concurrency=config.max_concurrent_rpcs,
                timeout_graceful_shutdown=_whole_seconds(config.grace_seconds),
                ssl_certfile=None if config.tls_cert is None else str(config.tls_cert),
                ssl_keyfile=None if config.tls_key is None else str(config.tls_key),
            )
        )

    def bind(self) -> int:
        """Bind and listen on ``host:http_port`` now (0: any free port); OSError with the reason otherwise."""
        address = f"{self._host}:{self._requested_port}"
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(
                self._host.strip("[]"), self._requested_port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
                if self._reuse_port:  # the workers of `recctl serve --workers N` share it, as they share gRPC's
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(sockaddr)
                sock.listen(2048)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise OSError(f"cannot listen on {address} for HTTP: {exc}") from None
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    async def start(self) -> None:
        """Serve on the bound socket from a task on this loop (TLS files are read here, before it starts)."""
        assert self._socket is not None, "bind() first"
        self._uvicorn.config.load()
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[self._socket]))

    async def stop(self, grace: float) -> None:
        """/health turns NOT_SERVING, no new connections; requests in flight get ``grace`` seconds to finish."""
        self.draining = True
        self._uvicorn.config.timeout_graceful_shutdown = _whole_seconds(grace)
        if self._task is None:
            if self._socket is not None:
                self._socket.close()
            return
        self._uvicorn.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)


def _whole_seconds(grace: float) -> int:
    """uvicorn's drain timeout counts whole seconds, and 0 would cut even a drain with nothing left to wait
    for (and log it as an error): at least 1 s, which an idle server does not wait out."""
    return max(1, math.ceil(grace))


class _LoopServer(uvicorn.Server):
    """uvicorn as a guest on the gRPC server's loop: the process's SIGTERM/SIGINT handling (drain both) stays
    the host's, so uvicorn must not install its own signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def max_body_bytes(limits: Limits) -> int:
    """The largest body a valid request could have (every list at its limit), with generous room."""
    return (
        _BODY_BASE_BYTES
        + _BODY_BYTES_PER_ID * limits.max_exclude_item_ids
        + 2 * _BODY_BYTES_PER_GENRE * limits.max_filter_genres
        + 6 * limits.max_request_id_length  # a JSON string escape is up to 6 characters per one
    )


def create_app(server: RecommenderServer, *, token: str | None, draining: Callable[[], bool]) -> FastAPI:
    """The routes over ``server``'s live engine; ``token`` (None: open) guards all but health and the docs."""
    state: ServingState = server.state
    app = FastAPI(
        title="movierec",
        summary="Movie recommendations over HTTP/JSON: the same engine and answers as the gRPC service",
        version="v1",
    )
    guarded = _token_check(token) if token is not None else []

    @app.post("/recommend", response_model=ItemsAnswer, responses=_ERRORS, dependencies=guarded)
    async def recommend(body: RecommendBody) -> JSONResponse:
        """The top-k movies for a user: seen movies, ``exclude_item_ids`` and filtered-out movies never appear."""
        engine = state.require_engine()
        (answer,) = engine.recommend([body.message()])
        if isinstance(answer, RequestError):
            raise answer
        response = pb.RecommendResponse(
            request_id=body.request_id, model_version=engine.model_version, index_version=engine.index_version
        )
        engine.write_items(response.items, answer)
        return JSONResponse(_items_answer(response))

    @app.post("/similar", response_model=ItemsAnswer, responses=_ERRORS, dependencies=guarded)
    async def similar(body: SimilarBody) -> JSONResponse:
        """The k movies nearest to ``item_id`` (never the movie itself; with ``user_id``, none the user has seen)."""
        engine = state.require_engine()
        result = engine.similar_items(body.message())
        response = pb.SimilarItemsResponse(
            request_id=body.request_id, model_version=engine.model_version, index_version=engine.index_version
        )
        engine.write_items(response.items, result)
        return JSONResponse(_items_answer(response))

    @app.get("/info", responses=_ERRORS, dependencies=guarded)
    async def info() -> JSONResponse:
        """What is served: versions, sizes, limits, genres, training metrics and the last reload's outcome
        (the fields of gRPC GetInfo)."""
        info = state.require_engine().info()
        info.swap_count = state.swap_count
        info.last_reload_error = client_safe(state.last_reload_error)
        info.last_refused_version = state.last_refused_version
        info.max_batch_size = server.config.max_batch_size
        log = server.servicer.log
        if log is not None:
            info.events_last_offset = log.last_offset
        return JSONResponse(_info_answer(info))

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "not serving"}})
    async def health() -> JSONResponse:
        """200 SERVING once the index is loaded; 503 NOT_SERVING while it loads and while the server drains.
        Needs no token, like gRPC health."""
        engine = state.engine
        if engine is None or draining():
            return JSONResponse({"status": "NOT_SERVING", "index_version": None}, status_code=503)
        return JSONResponse({"status": "SERVING", "index_version": engine.index_version})

    app.add_exception_handler(RequestError, _request_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    return app


def _token_check(token: str) -> list[Any]:
    """Route dependencies refusing (401) requests without ``Authorization: Bearer <token>``: constant-time
    compare of SHA-256 digests, as the gRPC interceptor does. HTTPBearer only declares the scheme, so the
    OpenAPI document says so and /docs offers 'Authorize'; the check reads the header itself to say what is
    wrong with it."""
    expected = hashlib.sha256(token.encode()).digest()
    scheme = HTTPBearer(auto_error=False, description="the token in the server's --token-file")

    async def check(request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise _unauthenticated(MISSING_TOKEN)
        kind, _, presented = header.strip().partition(" ")
        if kind.lower() != BEARER_SCHEME or not presented.strip():
            raise _unauthenticated(MALFORMED_TOKEN)
        digest = hashlib.sha256(presented.strip().encode("latin-1", "replace")).digest()
        if not hmac.compare_digest(digest, expected):
            raise _unauthenticated(WRONG_TOKEN)

    return [Security(scheme), Depends(check)]


def _unauthenticated(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNAUTHENTICATED, message)


def _items_answer(response: pb.RecommendResponse | pb.SimilarItemsResponse) -> dict[str, Any]:
    """The wire answer as JSON, item fields exactly as gRPC callers read them (the same float32 scores)."""
    return {
        "request_id": response.request_id,
        "model_version": response.model_version,
        "index_version": response.index_version,
        "items": [
            {
                "item_id": item.item_id,
                "score": item.score,
                "rank": item.rank,
                "title": item.title,
                "genres": list(item.genres),
                "year": item.year if item.HasField("year") else None,
                "because_item_id": item.because_item_id if item.HasField("because_item_id") else None,
            }
            for item in response.items
        ],
    }


def _info_answer(info: pb.GetInfoResponse) -> dict[str, Any]:
    """GetInfo's fields by their proto names, integers as JSON numbers (proto3 JSON would quote int64s)."""
    answer: dict[str, Any] = {}
    for descriptor in info.DESCRIPTOR.fields:
        value = getattr(info, descriptor.name)
        if isinstance(value, struct_pb2.Struct):
            answer[descriptor.name] = json_format.MessageToDict(value)
        elif isinstance(value, str | int | float | bool):
            answer[descriptor.name] = value
        else:  # a repeated field
            answer[descriptor.name] = list(value)
    return answer


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body = {"code": code, "message": message, "field": field}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _request_error(_: Request, error: RequestError) -> JSONResponse:
    """The engine's (or the token check's) refusal, with the gRPC message and the field it names."""
    field = None
    for detail in error.details:
        if isinstance(detail, error_details_pb2.BadRequest) and detail.field_violations:
            field = detail.field_violations[0].field.removeprefix("filter.")  # filter fields are top-level here
    return _error(HTTP_STATUS.get(error.code, 500), error.code.name, error.message, field)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Not JSON at all: 400 naming where parsing stopped; JSON off the schema: 422 naming the first field."""
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type.lower():
        message = f"send the body as JSON, with 'Content-Type: application/json' (got {content_type[:80]!r})"
        return _error(400, "INVALID_ARGUMENT", message)
    problems = list(error.errors())
    first: dict[str, Any] = problems[0] if problems else {"loc": ("body",), "msg": "invalid request", "type": ""}
    location = [str(part) for part in first.get("loc", ())[1:]]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "not JSON")
        where = f" at character {location[0]}" if location else ""
        return _error(400, "INVALID_ARGUMENT", client_safe(f"malformed JSON body{where}: {reason}"))
    field = ".".join(location) or None
    message = first.get("msg", "invalid value")
    if field is None:
        message = f"the body must be a JSON object ({message})"
    elif first.get("type") == "extra_forbidden":
        message = f"unknown field {field!r}"
    else:
        message = f"{field}: {message}"
    more = len(problems) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return _error(422, "INVALID_ARGUMENT", client_safe(message), field)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Unknown routes and methods in the same body shape as every other error."""
    code = _CODE_OF_HTTP.get(error.status_code, "UNKNOWN")
    message = str(error.detail)
    if error.status_code in (404, 405):  # the caller's own path, cut short: no server path is in it
        message = f"{message}: {request.method} {request.url.path[:200]} (see /docs for the routes)"
    response = _error(error.status_code, code, message[:1000])
    for name, value in (error.headers or {}).items():
        response.headers[name] = value
    return response


# ---------------------------------------------------------------- body size limit (plain ASGI)

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class _BodyLimit:
    """Refuse (413) a request body larger than ``max_bytes`` before the application parses any of it.

    A declared Content-Length is checked at once; a chunked body is read up to
    the limit and then refused. Bodies within the limit are handed on whole.
    """

    def __init__(self, app: Callable[[_Scope, _Receive, _Send], Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, send: _Send) -> None:
        body = json.dumps(
            {
                "code": "RESOURCE_EXHAUSTED",
                "message": f"request body larger than {self.max_bytes:,} bytes, more than any valid request needs",
                "field": None,
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[_Message], receive: _Receive) -> _Receive:
    """A receive callable that returns ``messages`` in order, then whatever the connection brings next."""
    pending = list(messages)

    async def replay() -> _Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
