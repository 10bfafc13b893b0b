"""``recctl serve --workers N``: N server processes accepting on one port, and a parent that minds them.

One Python process answers on one core (gRPC's per-call work holds the
GIL), so a many-core host serves with N processes. The pattern is gRPC
Python's multiprocessing example: the parent reserves the port with
``SO_REUSEPORT`` and forks the workers before any gRPC object exists; each
worker runs the whole ordinary server (:func:`movierec.server.app.serve`:
health, reflection, hot swap, drain) with ``grpc.so_reuseport=1``, and the
kernel spreads incoming connections over them. Nothing of ours balances
calls; a connection stays with the worker that accepted it.

What the workers share:

* the index: the parent loads (and verifies) the first version once, before
  it forks, so every worker starts with it in pages shared copy-on-write
  (the stored ranked prefixes, the biggest part, are memory-mapped files,
  shared by every process that maps them, also in versions each worker loads
  itself on a hot swap); the parent drops its own reference once all serve;
* live events: the SQLite log by file, each worker polling it for the others'
  events (:class:`movierec.server.event_stores.SharedFileLog`, ~20 ms), or
  Redis (``--events redis://...``);
* metrics: each worker writes prometheus_client's multiprocess files into one
  temporary directory, which the parent serves summed on the one metrics port.

The parent forwards SIGTERM/SIGINT (drain) and SIGHUP (reload) to every
worker and waits for them (it says "draining" once every worker has begun its
stop, so a client that sees the line is refused, never served); a ``ReloadIndex`` call, which reaches one worker,
makes that worker send its parent SIGHUP, so every worker looks; a worker that dies after it was serving is
replaced, one that fails before it serves stops the whole server with its
error (a bad index fails every worker the same way).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.context import ForkProcess
from pathlib import Path
from types import FrameType
from typing import Any

from movierec.errors import MovierecError
from movierec.index import ServingIndex, limit_serving_threads
from movierec.server.app import ServerConfig, ServerEvent, load_index, serve
from movierec.server.metrics import MetricsHttpServer, mark_worker_dead, serve_multiprocess_http, use_multiprocess_dir
from movierec.server.servicer import fan_out_reloads

logger = logging.getLogger(__name__)

_POLL_S = 0.1
_PRELOADED: dict[str, ServingIndex] = {}
"""The index the parent loaded before forking, by path: each worker's first version (inherited, not copied)."""
_PR_SET_PDEATHSIG = 1
_STOP_MARGIN_S = 15.0
_RESPAWN_DELAY_S = 5.0
"""Beyond the drain grace, how long a worker may take to exit before it is killed."""
_DRAINING_REPORT_WAIT_S = 1.0
"""After SIGTERM, how long the parent waits for every worker to say its shutdown has begun before it says
"draining" anyway (a worker still loading, or hung, never says it)."""


def auto_workers() -> int:
    """``--workers auto``: one worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Worker:
    slot: int
    process: ForkProcess
    serving: bool = False
    # Started to replace a worker that died: its failure to start is retried, not fatal (the others serve on).
    replacement: bool = False


class _WorkerSet:
    """The parent's view of its workers: start, replace, signal, collect."""

    def __init__(self, config: ServerConfig, count: int, metrics_dir: Path | None) -> None:
        self._context = multiprocessing.get_context("fork")
        self.events: multiprocessing.Queue[tuple[int, int, str, str, dict[str, Any]]] = self._context.Queue()
        self._config = config
        self._metrics_dir = metrics_dir
        self.workers = [self._start(slot) for slot in range(count)]

    def _start(self, slot: int, *, replacement: bool = False) -> _Worker:
        process = self._context.Process(
            target=_worker_main,
            args=(self._config, slot, self.events, self._metrics_dir, os.getpid()),
            name=f"movierec-worker-{slot}",
        )
        process.start()
        return _Worker(slot, process, replacement=replacement)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process.pid is not None]

    def replace(self, worker: _Worker) -> None:
        self._forget(worker)
        self.workers[worker.slot] = self._start(worker.slot, replacement=True)

    def signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    def stop(self, grace_s: float, on_draining: Callable[[], None]) -> list[int | None]:
        """SIGTERM every worker, wait for them to drain (killing stragglers), and return their exit codes.

        ``on_draining`` runs once every worker has begun its stop (said
        "draining": its gRPC shutdown has begun, so it refuses new calls) or
        exited, or after :data:`_DRAINING_REPORT_WAIT_S`: whoever it tells that
        the server drains gets UNAVAILABLE for a new call, never an answer.
        """
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s + _STOP_MARGIN_S
        self._await_draining(time.monotonic() + _DRAINING_REPORT_WAIT_S)
        on_draining()
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                logger.error("worker %d (pid %s) did not stop in time: killed", worker.slot, worker.process.pid)
                worker.process.kill()
                worker.process.join(5)
            self._forget(worker)
        return [worker.process.exitcode for worker in self.workers]

    def _await_draining(self, deadline: float) -> None:
        """Until every worker has said "draining" or exited, or ``deadline`` (other events are dropped: stopping)."""
        waiting = {worker.process.pid: worker for worker in self.workers}
        while waiting and (left := deadline - time.monotonic()) > 0:
            try:
                _slot, pid, kind, _message, _data = self.events.get(timeout=min(left, _POLL_S / 10))
            except queue.Empty:
                pass
            else:
                if kind == "draining":
                    waiting.pop(pid, None)
            waiting = {pid: worker for pid, worker in waiting.items() if worker.process.is_alive()}

    def _forget(self, worker: _Worker) -> None:
        if self._metrics_dir is not None and worker.process.pid is not None:
            mark_worker_dead(worker.process.pid, self._metrics_dir)


def serve_workers(config: ServerConfig, count: int, announce: Callable[[ServerEvent], None]) -> None:
    """Serve with ``count`` worker processes until SIGTERM/SIGINT, then drain them all; errors propagate.

    Runs in the parent, which creates no gRPC object (forking after one exists
    is unsafe): it holds the port, the metrics endpoint and the workers.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    reserved = [_reserve_port(config.host, config.port)]
    port = int(reserved[0].getsockname()[1])
    http_port = config.http_port
    try:
        if http_port is not None:  # every worker must join one HTTP port too (0: the parent picks it, as for gRPC)
            reserved.append(_reserve_port(config.host, http_port, what="HTTP"))
            http_port = int(reserved[-1].getsockname()[1])
        limit_serving_threads()  # before any BLAS or OpenMP pool exists: none is carried over a fork
        _PRELOADED[str(config.index_path)] = load_index(config.index_path, ranked_depth=config.ranked_depth)
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    metrics_dir = Path(tempfile.mkdtemp(prefix="movierec-metrics-")) if config.metrics_port is not None else None
    stop_signal: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: stop_signal.append(signum))
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    metrics_http: MetricsHttpServer | None = None
    workers: _WorkerSet | None = None
    try:
        gc.freeze()  # the interpreter's objects so far stay where they are: the GC never dirties their shared pages
        # A worker's ReloadIndex may signal before the forwarder is in place: never let SIGHUP end the parent.
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        workers = _WorkerSet(replace(config, port=port, http_port=http_port, reuse_port=True), count, metrics_dir)
        signal.signal(signal.SIGHUP, _forward_to(workers))
        address: dict[str, Any] = {"host": config.host, "port": port, "tls": config.tls_cert is not None}
        http_note = ""
        if http_port is not None:
            address["http_port"] = http_port
            http_note = f", HTTP on {config.host}:{http_port}"
        announce(
            ServerEvent(
                "listening",
                f"listening on {config.host}:{port}{http_note} with {count} worker processes"
                " (each joins the ports once loaded)",
                {**address, "workers": count, "pids": workers.pids},
            )
        )
        if metrics_dir is not None and config.metrics_port is not None:
            metrics_http = _serve_metrics(metrics_dir, config.metrics_port)
            announce(
                ServerEvent(
                    "metrics",
                    f"metrics of all {count} workers on http://127.0.0.1:{metrics_http.port}/metrics",
                    {"metrics_port": metrics_http.port, "multiprocess_dir": str(metrics_dir)},
                )
            )
        _mind(workers, count, address, announce, stop_signal)
    finally:
        if workers is not None:
            draining = ServerEvent(
                "draining",
                f"shutting down: draining every worker's in-flight calls for up to {config.grace_seconds:g}s",
                {"grace_seconds": config.grace_seconds},
            )
            codes = workers.stop(config.grace_seconds, lambda: announce(draining))
            failed = [code for code in codes if code not in (0, None)]
            if failed:
                logger.warning("workers exited with codes %s", codes)
        if metrics_http is not None:
            metrics_http.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        for sock in reserved:
            sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    announce(ServerEvent("stopped", "stopped"))


def _mind(
    workers: _WorkerSet,
    count: int,
    address: dict[str, Any],
    announce: Callable[[ServerEvent], None],
    stop_signal: list[int],
) -> None:
    """Until a stop signal: say SERVING once every worker is, pass on warnings, replace a worker that dies.

    Raises :class:`MovierecError` with the worker's own message when one of
    the first workers fails before serving (a bad index, a port it cannot
    bind); a replacement that fails to start is logged and tried again after
    :data:`_RESPAWN_DELAY_S`, while the others serve on.
    """
    announced = False
    warned: set[str] = set()
    respawn_at: dict[int, float] = {}  # slot -> when to try a failed replacement again
    while not stop_signal:
        try:
            slot, pid, kind, message, data = workers.events.get(timeout=_POLL_S)
        except queue.Empty:
            pass
        else:
            if kind == "failed" and not workers.workers[slot].replacement:
                raise MovierecError(message)
            if kind == "failed":
                logger.error("%s; the other workers serve on", message)
            if kind == "warning" and message not in warned:
                warned.add(message)
                announce(ServerEvent(kind, message, data))
            if kind == "serving":
                worker = workers.workers[slot]
                if worker.process.pid == pid:
                    worker.serving = True
                if not announced and all(w.serving for w in workers.workers):
                    announced = True
                    _PRELOADED.clear()  # the workers hold it now; a replacement worker loads its own
                    announce(
                        ServerEvent(
                            "serving",
                            f"SERVING index {data.get('index_version')} (model {data.get('model_version')}) on "
                            f"{address['host']}:{address['port']} with {count} workers (pids "
                            f"{', '.join(map(str, workers.pids))})",
                            {**data, **address, "workers": count, "pids": workers.pids},
                        )
                    )
        for worker in list(workers.workers):
            if worker.process.is_alive() or stop_signal:
                continue
            code = worker.process.exitcode
            if not worker.serving and not worker.replacement:
                raise MovierecError(f"worker {worker.slot} exited (code {code}) before it was serving")
            if worker.serving:
                logger.error(
                    "worker %d (pid %s) died (code %s): starting another", worker.slot, worker.process.pid, code
                )
            elif worker.slot not in respawn_at:
                logger.error(
                    "worker %d could not start (code %s): trying again in %gs", worker.slot, code, _RESPAWN_DELAY_S
                )
                respawn_at[worker.slot] = time.monotonic() + _RESPAWN_DELAY_S
            if respawn_at.get(worker.slot, 0.0) <= time.monotonic():
                respawn_at.pop(worker.slot, None)
                workers.replace(worker)


def _worker_main(
    config: ServerConfig,
    slot: int,
    events: multiprocessing.Queue[tuple[int, int, str, str, dict[str, Any]]],
    metrics_dir: Path | None,
    parent: int,
) -> None:
    """One worker: the ordinary server on the shared port, its lifecycle events sent to the parent."""
    import asyncio

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)  # the parent's handlers came along with the fork
    _drain_when_orphaned(parent)
    if metrics_dir is not None:
        use_multiprocess_dir(metrics_dir)
    # A ReloadIndex call reaches the one worker its connection landed on: that worker asks the parent to have
    # every worker look at CURRENT (the parent forwards SIGHUP to all; a SIGHUP never signals the parent back).
    fan_out_reloads(functools.partial(_signal_parent, parent, signal.SIGHUP))
    pid = os.getpid()
    preloaded = _PRELOADED.pop(str(config.index_path), None)
    _PRELOADED.clear()

    def announce(event: ServerEvent) -> None:
        events.put((slot, pid, event.kind, event.message, dict(event.data)))

    def loader(path: Path) -> ServingIndex:
        nonlocal preloaded
        index, preloaded = preloaded, None
        if index is not None and path == config.index_path:
            return index
        return load_index(path, ranked_depth=config.ranked_depth)

    try:
        asyncio.run(serve(config, announce, serve_metrics_http=False, loader=loader))
    except (MovierecError, OSError) as exc:
        events.put((slot, pid, "failed", f"worker {slot}: {exc}", {}))
        events.close()
        events.join_thread()
        raise SystemExit(1) from None


def _drain_when_orphaned(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (even by kill -9), so no worker outlives it serving.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere a worker outlives a killed parent until stopped.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def _signal_parent(parent: int, signum: int) -> None:
    if os.getppid() == parent:  # never a process that took the parent's pid after it died
        os.kill(parent, signum)


def _forward_to(workers: _WorkerSet) -> Callable[[int, FrameType | None], None]:
    def forward(signum: int, frame: FrameType | None) -> None:
        workers.signal_all(signum)

    return forward


def _reserve_port(host: str, port: int, *, what: str = "") -> socket.socket:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT so the port is ours and the workers can join it.

    Port 0 picks a free port: the workers all join the one the parent got
    (each binding port 0 itself would get a port of its own). A port held by a
    process without SO_REUSEPORT (another server) fails here with the
    operating system's reason. ``what``: the protocol the message names.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}{' for ' + what if what else ''}: {exc}") from None
    return sock


def _serve_metrics(metrics_dir: Path, port: int) -> MetricsHttpServer:
    """The one metrics endpoint, summing every worker's files (loopback only: metrics carry no authentication)."""
    try:
        return serve_multiprocess_http(metrics_dir, "127.0.0.1", port)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on 127.0.0.1:{port}: {exc}") from None
