"""Prometheus metrics for the gRPC server, served as text on their own HTTP port.

Request metrics use the names of go-grpc-prometheus / py-grpc-prometheus
(``grpc_server_handled_total``, ``grpc_server_handling_seconds``, ...) with
their labels (``grpc_service``, ``grpc_method``, ``grpc_type``, ``grpc_code``),
so stock gRPC dashboards and alerts work unchanged. Serving state has
``movierec_`` names. Every :class:`ServerMetrics` owns its registry: nothing is
global, so tests (and two servers in one process) never share counters.

:class:`MetricsInterceptor` records every call of a ``grpc.aio`` server
without the servicer doing anything; the servicer adds what only it knows
(per-message errors inside a stream, index swaps, exclusion violations).
Only methods the server implements are labelled (unknown methods never reach
a handler), so a client cannot inflate the label set.

HTTP/JSON requests (``recctl serve --http-port``) are counted by
:class:`HttpMetricsMiddleware` under the same names, labelled with the gRPC
method of the same meaning and ``grpc_type="http"``; the HTTP status maps back
to the gRPC code of the same meaning (200 OK, 400/422 INVALID_ARGUMENT, 404
NOT_FOUND, 503 UNAVAILABLE, ...). The label set of the gRPC series is
unchanged, so existing queries and alerts keep matching.

Several worker processes (``recctl serve --workers N``): each worker calls
:func:`use_multiprocess_dir` before it builds its :class:`ServerMetrics`, so
every value lives in a file of that directory (prometheus_client's
multiprocess mode), and the parent serves the sum over all workers with
:func:`serve_multiprocess_http` on the one metrics port.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)

GrpcType = Literal["unary", "client_stream", "server_stream", "bidi_stream", "http"]
"""``http``: a request of the HTTP/JSON API (:class:`HttpMetricsMiddleware`), counted under the gRPC method it
answers like, so one query sums both protocols and ``grpc_type="http"`` (or ``!="http"``) tells them apart."""
SwapOutcome = Literal["ok", "refused"]

LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Sub-millisecond resolution: a k=10 search answers in well under a millisecond."""

if TYPE_CHECKING:  # generic in the type stubs only; subscripting it at run time fails
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


def split_method(full_method: str) -> tuple[str, str]:
    """``/package.Service/Method`` -> (``package.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


class ServerMetrics:
    """The server's metrics in one private registry; every method is cheap and thread-safe."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        call = ("grpc_service", "grpc_method", "grpc_type")
        self._started = Counter("grpc_server_started", "RPCs started on the server.", call, registry=self.registry)
        self._handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*call, "grpc_code"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (a stream's whole life).",
            call,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._received = Counter(
            "grpc_server_msg_received", "Stream messages received from clients.", call, registry=self.registry
        )
        self._sent = Counter("grpc_server_msg_sent", "Stream messages sent to clients.", call, registry=self.registry)
        self._message_errors = Counter(
            "movierec_stream_message_errors",
            "Stream responses that carried a per-message error status (the stream itself went on).",
            ("grpc_service", "grpc_method", "grpc_code"),
            registry=self.registry,
        )
        # Info metrics have no multiprocess mode: there, the same series is a gauge (1: serving, 0: served before).
        self._index: Info | None = None
        self._index_gauge: Gauge | None = None
        self._index_labels: tuple[str, str] | None = None
        if multiprocess_dir() is None:
            self._index = Info("movierec_index", "The index and model version being served.", registry=self.registry)
        else:
            self._index_gauge = Gauge(
                "movierec_index_info",
                "The index and model version being served (1), by any live worker.",
                ("index_version", "model_version"),
                registry=self.registry,
                multiprocess_mode="livemax",
            )
        self._swaps = Counter(
            "movierec_index_swaps",
            "Index hot swaps, by outcome (refused: the old index kept serving).",
            ("outcome",),
            registry=self.registry,
        )
        self._violations = Counter(
            "movierec_exclusion_violations",
            "Recommended items the user had seen or excluded; anything but 0 is a bug.",
            registry=self.registry,
        )
        for outcome in ("ok", "refused"):
            self._swaps.labels(outcome)  # export 0 from the start, so rate() and alerts see the series

        self._violations.inc(0)

    # -- per call (the interceptor calls these) ---------------------------------------------------

    def started(self, full_method: str, grpc_type: GrpcType = "unary") -> None:
        self._started.labels(*split_method(full_method), grpc_type).inc()

    def observe(self, full_method: str, code: grpc.StatusCode, seconds: float, grpc_type: GrpcType = "unary") -> None:
        """One finished call: its status code and how long it took."""
        service, method = split_method(full_method)
        self._handled.labels(service, method, grpc_type, code.name).inc()
        self._latency.labels(service, method, grpc_type).observe(seconds)

    def message_received(self, full_method: str, grpc_type: GrpcType, count: int = 1) -> None:
        """Messages read from the client (a unary request counts as one, as in go-grpc-prometheus)."""
        self._received.labels(*split_method(full_method), grpc_type).inc(count)

    def message_sent(self, full_method: str, grpc_type: GrpcType, count: int = 1) -> None:
        self._sent.labels(*split_method(full_method), grpc_type).inc(count)

    # -- what only the servicer knows ------------------------------------------------------------

    def stream_message_error(self, full_method: str, code: grpc.StatusCode, count: int = 1) -> None:
        """A stream response that carried an error for its own request."""
        self._message_errors.labels(*split_method(full_method), code.name).inc(count)

    def index_loaded(self, index_version: str, model_version: str) -> None:
        """The versions now answering (replaces the previous ones)."""
        if self._index is not None:
            self._index.info({"index_version": index_version, "model_version": model_version})
        elif self._index_gauge is not None:
            if self._index_labels is not None:
                self._index_gauge.labels(*self._index_labels).set(0)
            self._index_labels = (index_version, model_version)
            self._index_gauge.labels(*self._index_labels).set(1)

    def swap(self, outcome: SwapOutcome) -> None:
        self._swaps.labels(outcome).inc()

    def exclusion_violations(self, count: int) -> None:
        """Items found in a response that the exclusion contract forbids (a self-check; should stay 0)."""
        if count:
            self._violations.inc(count)

    # -- exposition --------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric in this registry."""
        return generate_latest(self.registry)

    def serve_http(self, host: str = "127.0.0.1", port: int = 0) -> MetricsHttpServer:
        """Serve ``/metrics`` on a daemon thread; port 0 picks a free one (see ``.port``)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsHttpServer(server, thread)


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when this process uses it."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def use_multiprocess_dir(directory: Path) -> None:
    """Keep every metric this process creates from now on in files under ``directory`` (a worker process).

    prometheus_client picks its value store when it is imported, from
    ``PROMETHEUS_MULTIPROC_DIR``; a worker forked from a parent that had
    already imported it switches here, before its first metric exists.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def serve_multiprocess_http(directory: Path, host: str = "127.0.0.1", port: int = 0) -> MetricsHttpServer:
    """Serve ``/metrics`` summed over every worker that writes under ``directory`` (the parent process)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsHttpServer(server, thread)


def mark_worker_dead(pid: int, directory: Path) -> None:
    """Drop a finished worker's live gauges (its counters stay counted: a restart must not lower a total)."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class MetricsHttpServer:
    """A running exposition endpoint; :meth:`close` stops it and frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class MetricsInterceptor(_ServerInterceptor):
    """Counts and times every RPC of a ``grpc.aio`` server, and counts stream messages.

    Status codes: the code the handler set or aborted with, OK when it set
    none, UNKNOWN for an escaping exception, CANCELLED when the client went
    away. A response stream is closed as soon as the call ends, so a servicer's
    ``finally`` runs at once rather than when the generator is collected.
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        grpc_type = _grpc_type(handler)
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, method, grpc_type), **options)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary, method, grpc_type), **options)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, grpc_type), **options
            )
        return grpc.stream_stream_rpc_method_handler(self._stream(handler.stream_stream, method, grpc_type), **options)

    def _unary(self, behaviour: Any, method: str, grpc_type: GrpcType) -> Callable[[Any, Any], Awaitable[Any]]:
        metrics = self._metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            metrics.started(method, grpc_type)
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await behaviour(self._counted(request, method, grpc_type), context)
                code = context.code() or grpc.StatusCode.OK
                metrics.message_sent(method, grpc_type)
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                metrics.observe(method, code, time.perf_counter() - start, grpc_type)

        return observed

    def _stream(self, behaviour: Any, method: str, grpc_type: GrpcType) -> Callable[[Any, Any], AsyncIterator[Any]]:
        metrics = self._metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            metrics.started(method, grpc_type)
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            result: Any = None
            try:
                result = behaviour(self._counted(request, method, grpc_type), context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        metrics.message_sent(method, grpc_type)
                        yield response
                else:  # a behaviour that writes with context.write() (e.g. the health Watch)
                    await result
                code = context.code() or grpc.StatusCode.OK
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                try:
                    if inspect.isasyncgen(result):
                        await result.aclose()  # run the servicer's cleanup now, not at garbage collection
                finally:
                    metrics.observe(method, code, time.perf_counter() - start, grpc_type)

        return observed

    def _counted(self, request: Any, method: str, grpc_type: GrpcType) -> Any:
        """The request (counted), or for a request stream an iterator that counts each message as it is read."""
        metrics = self._metrics
        if grpc_type not in ("client_stream", "bidi_stream"):
            metrics.message_received(method, grpc_type)
            return request

        async def counting() -> AsyncIterator[Any]:
            async for message in request:
                metrics.message_received(method, grpc_type)
                yield message

        return counting()


_GRPC_CODE_OF_HTTP = {
    200: grpc.StatusCode.OK,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def grpc_code_of_http(status: int) -> grpc.StatusCode:
    """The gRPC code an HTTP status means here (another 4xx: INVALID_ARGUMENT; another 5xx: INTERNAL)."""
    known = _GRPC_CODE_OF_HTTP.get(status)
    if known is not None:
        return known
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


class HttpMetricsMiddleware:
    """ASGI middleware counting and timing the HTTP/JSON API's requests in :class:`ServerMetrics`.

    ``routes`` maps a path to the full gRPC method it answers like
    (``/recommend`` -> ``/movierec.v1.RecommenderService/Recommend``); other
    paths (the docs, a typo) are not counted, so a client cannot inflate the
    label set. The time runs from the request's arrival to its last body byte.
    """

    def __init__(
        self,
        app: Callable[[_Scope, _Receive, _Send], Awaitable[None]],
        metrics: ServerMetrics,
        routes: Mapping[str, str],
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._routes = dict(routes)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        method = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if method is None:
            await self._app(scope, receive, send)
            return
        metrics = self._metrics
        metrics.started(method, "http")
        metrics.message_received(method, "http")
        start = time.perf_counter()
        status = 500  # an exception escaping the application: uvicorn answers 500

        async def noting_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        code = grpc.StatusCode.UNKNOWN
        try:
            await self._app(scope, receive, noting_status)
            code = grpc_code_of_http(status)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            if code is grpc.StatusCode.OK:
                metrics.message_sent(method, "http")
            metrics.observe(method, code, time.perf_counter() - start, "http")


def _grpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> GrpcType:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"
