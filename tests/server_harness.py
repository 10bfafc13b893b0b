"""Run the real ``grpc.aio`` recommender server in a background thread for tests.

The server gets its own event loop in a daemon thread so tests stay plain
synchronous code talking to it over 127.0.0.1 with an OS-chosen free port,
exactly like an outside client; ``stop`` always tears it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
from bundle_factory import make_model_bundle

from movierec.index import ServingIndex, build_index
from movierec.server.app import RecommenderServer, ServerConfig, load_index

T = TypeVar("T")
RECCTL = str(Path(sys.executable).with_name("recctl"))
STARTUP_TIMEOUT = 60.0
LOAD_TIMEOUT = 30.0


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


@contextlib.contextmanager
def serving(config: ServerConfig, **server_options: Any) -> Iterator[ServerThread]:
    """A :class:`ServerThread` whose index has loaded, stopped on the way out (also when loading fails)."""
    thread = ServerThread(config, **server_options)
    try:
        thread.start_loading().result(LOAD_TIMEOUT)
        yield thread
    finally:
        thread.stop()


async def _create(
    config: ServerConfig,
    loader: Callable[[Path], ServingIndex],
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]],
) -> RecommenderServer:
    """Built inside the loop: grpc.aio binds a server to the loop that creates it."""
    return RecommenderServer(config, loader=loader, interceptors=interceptors)


class ServeProcess:
    """``recctl serve --json`` in a subprocess; its stdout events are read on a thread so nothing blocks."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [RECCTL, "serve", "--json", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.events.put(json.loads(line))

    def next_event(self, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def wait_serving(self) -> dict[str, dict[str, Any]]:
        """Read lifecycle events up to "serving"; returns them by kind ("listening" carries the port)."""
        events: dict[str, dict[str, Any]] = {}
        while "serving" not in events:
            event = self.next_event()
            events[event["event"]] = event
        return events
