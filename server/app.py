"""The gRPC server process: bind first, load second, hot-swap new index versions, drain on SIGTERM.

Order matters to operators: the port is bound and the health service answers
NOT_SERVING before the (possibly slow) index load, so orchestrators can tell
"starting" from "dead"; only after the index is verified and warmed up does
health report SERVING. On SIGTERM/SIGINT health flips to NOT_SERVING, new
calls are refused and in-flight calls get ``grace_seconds`` to finish.

While serving a store root, the server follows its ``CURRENT`` pointer
(:mod:`movierec.server.reload`: polled, on SIGHUP, and on the ``ReloadIndex``
RPC), and keeps live events in an interaction log beside the store
(:mod:`movierec.server.interaction_log`), replayed from the offset the served
index has compacted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from movierec.bundle import MANIFEST_NAME
from movierec.errors import MovierecError
from movierec.index import ServingIndex, limit_serving_threads, open_index
from movierec.security import read_token_file, server_credentials
from movierec.server.admission import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_BUFFER_BYTES,
    check_token,
    exposure_warnings,
    receive_limit,
    server_options,
)
from movierec.server.auth import BearerTokenInterceptor
from movierec.server.engine import ServingEngine
from movierec.server.event_stores import open_server_store, watch_store_health
from movierec.server.interaction_log import DEFAULT_MAX_LIVE_ITEMS_PER_USER, LOG_FILE_NAME
from movierec.server.limits import Limits
from movierec.server.live_events import LiveEventStore
from movierec.server.metrics import MetricsHttpServer, MetricsInterceptor, ServerMetrics
from movierec.server.reload import DEFAULT_POLL_SECONDS, IndexReloader
from movierec.server.servicer import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_STREAM_BATCH, RecommenderServicer
from movierec.server.state import ServingState
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from movierec.server.http_api import HttpApi

logger = logging.getLogger(__name__)
_GOAWAY_SETTLE_S = 0.05
"""How long after the gRPC stop begins "draining" is announced at the latest (see RecommenderServer.stop)."""
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
DEFAULT_GRACE_SECONDS = 10.0
# Health is reported for the whole server ("") and for the service by name; both move together.
HEALTH_SERVICES = ("", SERVICE_NAME)
# The live event store's own health: NOT_SERVING while it refuses writes (e.g. Redis down), the rest serving on.
EVENTS_HEALTH_SERVICE = "movierec.v1.LiveEvents"
# 256 places x (row + score) = 2 KiB per user (12 MiB for MovieLens-1M); covers k up to 256 with room
# for the request's own exclusions. Deeper requests, filtered ones and fold-in users scan.
DEFAULT_RANKED_DEPTH = 256


@dataclass(frozen=True)
class ServerConfig:
    index_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    limits: Limits = field(default_factory=Limits)
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    max_stream_batch: int = DEFAULT_MAX_STREAM_BATCH
    # Most requests one RecommendBatch call may carry (INVALID_ARGUMENT beyond).
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    # Places of each user's ranking precomputed at load (movierec.index.ranked); 0: every request scans.
    ranked_depth: int = DEFAULT_RANKED_DEPTH
    # Interaction log; None: ``interactions.sqlite3`` in the store root (beside a single version).
    events_path: Path | None = None
    # Live events in Redis, shared by every replica (redis://HOST:PORT/DB); overrides events_path.
    events_url: str | None = None
    # Distinct movies one user may hold in the live store, not yet compacted (RESOURCE_EXHAUSTED beyond).
    max_live_events_per_user: int = DEFAULT_MAX_LIVE_ITEMS_PER_USER
    # Share the port with other processes (SO_REUSEPORT): the workers of `recctl serve --workers N`.
    reuse_port: bool = False
    # How often CURRENT is checked for a new version; 0 turns polling off (SIGHUP and ReloadIndex still work).
    poll_seconds: float = DEFAULT_POLL_SECONDS
    # Prometheus text on http://127.0.0.1:<metrics_port>/metrics (None: no metrics server).
    metrics_port: int | None = None
    # The HTTP/JSON API (movierec.server.http_api) on host:<http_port> beside gRPC; 0: any free port; None: none.
    http_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A file holding the bearer token every call must carry (health and reflection excepted).
    token_file: Path | None = None
    # Admission (movierec.server.admission): calls and streams in progress at once (RESOURCE_EXHAUSTED beyond),
    # bytes each stream holds per direction, request metadata bytes, and the largest message accepted
    # (None: derived from ``limits`` and ``max_batch_size``).
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    max_streams: int = DEFAULT_MAX_STREAMS
    stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    max_receive_bytes: int | None = None

    @property
    def receive_bytes(self) -> int:
        """The largest message the server accepts: configured, or derived from the request limits."""
        if self.max_receive_bytes is not None:
            return self.max_receive_bytes
        return receive_limit(self.limits, max_batch_size=self.max_batch_size)

    @property
    def store_root(self) -> Path | None:
        """The index store followed for hot swaps; None when ``index_path`` is one fixed version."""
        return None if (self.index_path / MANIFEST_NAME).is_file() else self.index_path

    @property
    def events_spec(self) -> str | Path:
        """The live event store: the Redis URL, else the SQLite log's path."""
        return self.events_url if self.events_url is not None else self.log_path

    @property
    def log_path(self) -> Path:
        if self.events_path is not None:
            return self.events_path
        root = self.store_root
        return (self.index_path.parent if root is None else root) / LOG_FILE_NAME


def load_index(path: Path, ranked_depth: int = DEFAULT_RANKED_DEPTH) -> ServingIndex:
    """Open with every checksum verified and the users' rankings at hand (mapped from the version, or
    precomputed when it stores none), then warm up so the first request is not the slow one."""
    started = time.perf_counter()
    index = open_index(path, verify=True, ranked_depth=ranked_depth)
    if ranked_depth and index.ranked is None and index.n_users and index.n_items:
        logger.warning(
            "index %s: users' rankings not precomputed (%s index, or too many users for the memory cap): "
            "every request scans",
            index.version,
            index.kind,
        )
    if index.ranked is not None:
        logger.info(
            "index %s: %d places of %d users' rankings %s (%.1f MiB) in %.1f s",
            index.version,
            index.ranked.depth,
            index.n_users,
            "mapped from the version" if index.ranked.stored else "precomputed",
            index.ranked.nbytes / 2**20,
            time.perf_counter() - started,
        )
    index.warm_up()
    return index


class RecommenderServer:
    """One ``grpc.aio`` server with the recommender, health and reflection services."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        loader: Callable[[Path], ServingIndex] | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
        credentials: grpc.ServerCredentials | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        """``loader`` opens a version (default: :func:`load_index` with ``config.ranked_depth``);
        ``interceptors`` wrap every call, health and reflection included (auth, metrics);
        ``credentials`` make the port TLS-only."""
        self.config = config
        self.state = ServingState(metrics)
        self.servicer = RecommenderServicer(
            self.state,
            max_stream_batch=config.max_stream_batch,
            max_batch_size=config.max_batch_size,
            limits=config.limits,
            max_streams=config.max_streams,
            stream_buffer_bytes=config.stream_buffer_bytes,
            metrics=metrics,
        )
        self.log: LiveEventStore | None = None
        self.reloader: IndexReloader | None = None
        self._credentials = credentials
        self._watching: asyncio.Task[None] | None = None
        self._watching_events: asyncio.Task[None] | None = None
        # grpc-stubs predates health.aio; the asyncio servicer is the one a grpc.aio server needs.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._loader = loader if loader is not None else functools.partial(load_index, ranked_depth=config.ranked_depth)
        # No SO_REUSEPORT unless asked (workers): a port already in use (say, by an old instance) must fail
        # loudly, not be shared.
        reuse_port = ("grpc.so_reuseport", 1 if config.reuse_port else 0)
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[reuse_port, *server_options(config.receive_bytes, config.max_metadata_bytes)],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        pb_grpc.add_RecommenderServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self.port: int | None = None
        self.http: HttpApi | None = None
        if config.http_port is not None:
            from movierec.server.http_api import HttpApi  # FastAPI is imported only by servers that serve HTTP

            self.http = HttpApi(self)

    async def start(self) -> int:
        """Bind and start answering (NOT_SERVING until :meth:`load`, unless it already ran); returns the port."""
        if self.state.engine is None:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.http is not None:
            self.http.bind()  # first: a taken HTTP port fails before the gRPC port opens
        address = f"{self.config.host}:{self.config.port}"
        try:
            if not self.config.reuse_port:
                _check_bindable(self.config.host, self.config.port)
            if self._credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, self._credentials)
        except (OSError, RuntimeError) as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        await self._server.start()
        if self.http is not None:
            await self.http.start()
        return self.port

    async def load(self) -> ServingEngine:
        """Load the index and replay the interaction log off the event loop (health keeps answering),
        then publish, report SERVING and start following the store's CURRENT."""
        index = await asyncio.to_thread(self._loader, self.config.index_path)
        # The whole log (every event any retained version may need), the index checked against it (no-loss rule).
        self.log = await asyncio.to_thread(
            open_server_store,
            self.config.events_spec,
            self.config.store_root,
            index.index_version,
            index.events,
            max_live_items_per_user=self.config.max_live_events_per_user,
        )
        self._watching_events = asyncio.create_task(watch_store_health(self.log, self._events_health))
        engine = self._make_engine(index)
        self.state.publish(engine)
        self.servicer.log = self.log
        root = self.config.store_root
        if root is not None:
            self.reloader = IndexReloader(root, self.state, self._loader, self._make_engine, self.log)
            self.servicer.reloader = self.reloader
            if self.config.poll_seconds > 0:
                self._watching = asyncio.create_task(self.reloader.watch(self.config.poll_seconds))
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return engine

    async def stop(self, grace: float | None = None, *, on_draining: Callable[[], None] | None = None) -> None:
        """NOT_SERVING at once, refuse new calls, let in-flight calls finish within the grace period.

        ``on_draining`` runs once the gRPC server's shutdown has begun (its
        first step closes the listeners and refuses new calls), so whoever it
        tells that the server drains gets UNAVAILABLE for a new call, never an answer.
        """
        await self.health.enter_graceful_shutdown()
        grace = self.config.grace_seconds if grace is None else grace
        # HTTP drains alongside gRPC: /health turns 503 now, requests in flight finish within the same grace.
        http_stopped = asyncio.create_task(self.http.stop(grace)) if self.http is not None else None
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        grpc_stopped = asyncio.create_task(self._server.stop(grace))
        await asyncio.sleep(0)  # one step of the stop: grpc core's shutdown is called before it first waits
        if on_draining is not None:
            # Core tells open connections (HTTP/2 GOAWAY) on its own threads: a call that beats that message is
            # cancelled, not refused. A moment (or the whole stop, when nothing is in flight) lets it arrive.
            await asyncio.wait({grpc_stopped}, timeout=_GOAWAY_SETTLE_S)
            on_draining()
        await grpc_stopped
        if http_stopped is not None:
            await http_stopped
        if self._watching_events is not None:  # after the stop: the port closes no later than it used to
            self._watching_events.cancel()
            await asyncio.gather(self._watching_events, return_exceptions=True)
        if self.log is not None:
            self.log.close()

    def _make_engine(self, index: ServingIndex) -> ServingEngine:
        return ServingEngine(index, self.config.limits, self.log)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()

    async def _events_health(self, error: str | None) -> None:
        """The live event store's own health entry: NOT_SERVING while it cannot take writes (RecordInteractions
        answers UNAVAILABLE; recommendations go on from what this process has, so the server stays SERVING)."""
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set(
            EVENTS_HEALTH_SERVICE, serving if error is None else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in HEALTH_SERVICES:
            await self.health.set(name, status)


def _check_bindable(host: str, port: int) -> None:
    """Raise OSError (e.g. "Address already in use") if ``host:port`` cannot be bound.

    gRPC reports a failed bind only as a log line plus a bare RuntimeError;
    trying the address first gives the operator the operating system's reason.
    """
    if port == 0:
        return
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as probe:
            probe.bind(sockaddr)


@dataclass(frozen=True)
class ServerEvent:
    """A line in the server's life (listening, serving, draining, stopped) for people and for scripts."""

    kind: str
    message: str
    data: dict[str, object] = field(default_factory=dict)


async def serve(
    config: ServerConfig,
    announce: Callable[[ServerEvent], None],
    *,
    serve_metrics_http: bool = True,
    loader: Callable[[Path], ServingIndex] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then drain; a bad index stops the server and its error propagates.

    ``serve_metrics_http=False``: count metrics but leave their HTTP port to
    someone else (a worker of :mod:`movierec.server.workers`, whose parent
    serves every worker's sum). ``loader``: how versions are opened (default
    :func:`load_index`; a worker's first one comes already loaded from its parent).

    This is a whole serving process, so it takes the process-wide thread policy
    of :func:`movierec.index.limit_serving_threads`: one BLAS thread per search.
    """
    limit_serving_threads()
    metrics = ServerMetrics() if config.metrics_port is not None else None
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    if metrics is not None:  # outermost, so calls refused by the token check are counted too
        interceptors.append(MetricsInterceptor(metrics))
    if config.token_file is not None:
        token = read_token_file(config.token_file)
        check_token(token)
        interceptors.append(BearerTokenInterceptor(token))
    credentials = _credentials(config)
    for warning in exposure_warnings(config.host, tls=credentials is not None, token=config.token_file is not None):
        logger.warning("%s", warning)
        announce(ServerEvent("warning", f"WARNING: {warning}", {"warning": warning}))
    server = RecommenderServer(
        config, loader=loader, interceptors=interceptors, credentials=credentials, metrics=metrics
    )
    # A worker joining a shared port (SO_REUSEPORT) loads first: the kernel would hand it connections at once,
    # and its siblings can answer them meanwhile.
    loaded = await server.load() if config.reuse_port else None
    port = await server.start()
    address = {"host": config.host, "port": port, "tls": credentials is not None}
    http_note = ""
    if server.http is not None:
        address["http_port"] = server.http.port
        http_note = f", HTTP on {config.host}:{server.http.port}"
    announce(
        ServerEvent(
            "listening", f"listening on {config.host}:{port}{http_note} (NOT_SERVING while the index loads)", address
        )
    )
    metrics_http = _serve_metrics(metrics, config, announce) if serve_metrics_http else None
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    reloads: set[asyncio.Task[object]] = set()

    def reload_now() -> None:  # SIGHUP: the operator says "look at CURRENT now", retrying a refused version
        if server.reloader is not None:
            task: asyncio.Task[object] = asyncio.create_task(server.reloader.reload(force=True))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_now)
    loading = asyncio.create_task(server.load() if loaded is None else _already(loaded))
    stopping = asyncio.create_task(stop_requested.wait())
    on_draining: Callable[[], None] | None = None  # set once the stop is an orderly one (not a load failure)

    def announce_draining() -> None:
        message = f"shutting down: draining in-flight calls for up to {config.grace_seconds:g}s"
        announce(ServerEvent("draining", message, {"grace_seconds": config.grace_seconds}))

    try:
        await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            engine = loading.result()  # re-raises a load failure (e.g. BundleError)
            announce(
                ServerEvent(
                    "serving",
                    f"SERVING index {engine.index_version} (model {engine.model_version}, "
                    f"{engine.index.n_items} items, {engine.index.n_users} users) on {config.host}:{port}",
                    {**address, "index_version": engine.index_version, "model_version": engine.model_version},
                )
            )
            await stopping
        on_draining = announce_draining
    finally:
        for task in (loading, stopping):
            task.cancel()
        await asyncio.gather(loading, stopping, return_exceptions=True)
        await server.stop(on_draining=on_draining)
        if metrics_http is not None:
            metrics_http.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    announce(ServerEvent("stopped", "stopped"))


async def _already(engine: ServingEngine) -> ServingEngine:
    return engine


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise MovierecError("TLS needs both --tls-cert and --tls-key")
    if config.tls_cert is None or config.tls_key is None:
        return None
    return server_credentials(config.tls_cert, config.tls_key)


def _serve_metrics(
    metrics: ServerMetrics | None, config: ServerConfig, announce: Callable[[ServerEvent], None]
) -> MetricsHttpServer | None:
    """Metrics always bind loopback: they reveal load and versions, and carry no authentication."""
    if metrics is None or config.metrics_port is None:
        return None
    try:
        http = metrics.serve_http("127.0.0.1", config.metrics_port)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on 127.0.0.1:{config.metrics_port}: {exc}") from None
    announce(ServerEvent("metrics", f"metrics on http://127.0.0.1:{http.port}/metrics", {"metrics_port": http.port}))
    return http
