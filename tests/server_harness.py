"""Run the real ``grpc.aio`` recommender server in a background thread for tests.

The server gets its own event loop in a daemon thread so tests stay plain
synchronous code talking to it over 127.0.0.1 with an OS-chosen free port,
exactly like an outside client; ``stop`` always tears it down.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from bundle_factory import make_model_bundle

from movierec.index import ServingIndex, build_index
from movierec.server.app import RecommenderServer, ServerConfig, load_index

T = TypeVar("T")


def make_index(root: Path, **bundle_shape: int) -> Path:
    """A random model bundle indexed into ``root/index``; returns the index store root."""
    model = make_model_bundle(root / "model", **bundle_shape)
    build_index(model, root / "index")
    return root / "index"


class ServerThread:
    """A started :class:`RecommenderServer` on 127.0.0.1:<free port>, driven from another thread."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        loader: Callable[[Path], ServingIndex] = load_index,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-grpc-server", daemon=True)
        self._thread.start()
        self.server: RecommenderServer = self.run(_create(config, loader, interceptors))
        self.port = self.run(self.server.start())
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start_loading(self) -> Any:
        """Begin loading the index without waiting (a concurrent.futures.Future of the engine)."""
        return asyncio.run_coroutine_threadsafe(self.server.load(), self._loop)

    def stop(self, grace: float = 0.0) -> None:
        try:
            self.run(self.server.stop(grace))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


async def _create(
    config: ServerConfig,
    loader: Callable[[Path], ServingIndex],
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]],
) -> RecommenderServer:
    """Built inside the loop: grpc.aio binds a server to the loop that creates it."""
    return RecommenderServer(config, loader=loader, interceptors=interceptors)
