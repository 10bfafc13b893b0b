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
import time
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
        self._pumping = threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True)
        self._pumping.start()

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
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while "serving" not in events:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    self._pumping.join(5)  # every line it printed is queued once its stdout is drained
                    if self.events.empty():
                        raise AssertionError(self._exited_before_serving()) from None
                elif time.monotonic() > deadline:
                    raise
                continue
            events[event["event"]] = event
        return events

    def _exited_before_serving(self) -> str:
        stderr = self.process.stderr.read() if self.process.stderr is not None else ""
        return f"recctl serve exited with code {self.process.returncode} before serving: {stderr[-2000:]}"
