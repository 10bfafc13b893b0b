"""The gRPC server process: bind first, load second, drain on SIGTERM.

Order matters to operators: the port is bound and the health service answers
NOT_SERVING before the (possibly slow) index load, so orchestrators can tell
"starting" from "dead"; only after the index is verified and warmed up does
health report SERVING. On SIGTERM/SIGINT health flips to NOT_SERVING, new
calls are refused and in-flight calls get ``grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from movierec.index import ServingIndex, limit_serving_threads, open_index
from movierec.server.engine import ServingEngine
from movierec.server.limits import Limits
from movierec.server.servicer import DEFAULT_MAX_STREAM_BATCH, RecommenderServicer
from movierec.server.state import ServingState
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
DEFAULT_GRACE_SECONDS = 10.0
# Health is reported for the whole server ("") and for the service by name; both move together.
HEALTH_SERVICES = ("", SERVICE_NAME)


@dataclass(frozen=True)
class ServerConfig:
    index_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    limits: Limits = field(default_factory=Limits)
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    max_stream_batch: int = DEFAULT_MAX_STREAM_BATCH


def load_index(path: Path) -> ServingIndex:
    """Open with every checksum verified, then warm up so the first request is not the slow one."""
    index = open_index(path, verify=True)
    index.warm_up()
    return index


class RecommenderServer:
    """One ``grpc.aio`` server with the recommender, health and reflection services."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        loader: Callable[[Path], ServingIndex] = load_index,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        """``interceptors`` wrap every call, health and reflection included (auth, metrics)."""
        self.config = config
        self.state = ServingState()
        self.servicer = RecommenderServicer(self.state, max_stream_batch=config.max_stream_batch)
        # grpc-stubs predates health.aio; the asyncio servicer is the one a grpc.aio server needs.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._loader = loader
        # No SO_REUSEPORT: a port already in use (say, by an old instance) must fail loudly, not be shared.
        self._server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_RecommenderServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self.port: int | None = None

    async def start(self) -> int:
        """Bind and start answering (NOT_SERVING until :meth:`load`); returns the bound port."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.config.host}:{self.config.port}"
        try:
            _check_bindable(self.config.host, self.config.port)
            self.port = self._server.add_insecure_port(address)
        except (OSError, RuntimeError) as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        await self._server.start()
        return self.port

    async def load(self) -> ServingEngine:
        """Load the index off the event loop (health keeps answering), then publish it and report SERVING."""
        index = await asyncio.to_thread(self._loader, self.config.index_path)
        engine = ServingEngine(index, self.config.limits)
        self.state.publish(engine)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return engine

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING at once, refuse new calls, let in-flight calls finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.config.grace_seconds if grace is None else grace)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()

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


async def serve(config: ServerConfig, announce: Callable[[ServerEvent], None]) -> None:
    """Run until SIGTERM or SIGINT, then drain; a bad index stops the server and its error propagates.

    This is a whole serving process, so it takes the process-wide thread policy
    of :func:`movierec.index.limit_serving_threads`: one BLAS thread per search.
    """
    limit_serving_threads()
    server = RecommenderServer(config)
    port = await server.start()
    address = {"host": config.host, "port": port}
    announce(
        ServerEvent("listening", f"listening on {config.host}:{port} (NOT_SERVING while the index loads)", address)
    )
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    loading = asyncio.create_task(server.load())
    stopping = asyncio.create_task(stop_requested.wait())
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
        announce(
            ServerEvent(
                "draining",
                f"shutting down: draining in-flight calls for up to {config.grace_seconds:g}s",
                {"grace_seconds": config.grace_seconds},
            )
        )
    finally:
        for task in (loading, stopping):
            task.cancel()
        await asyncio.gather(loading, stopping, return_exceptions=True)
        await server.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    announce(ServerEvent("stopped", "stopped"))
