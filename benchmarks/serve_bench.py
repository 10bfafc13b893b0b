"""Serving throughput and latency against the gRPC floor of this machine, in one run.

Five servers answer the same wire calls with the same client and payload:

* ``echo-sync`` / ``echo-aio``: no-op servers (sync thread pool / ``grpc.aio``)
  that parse the request and return pre-serialised bytes of a real 10-item
  response with the request id: the floor, i.e. what gRPC Python itself costs
  to carry an answer of our size;
* ``echo-aio-empty``: the same ``grpc.aio`` no-op server returning only the
  request id (a response of a few bytes): the floor a no-op server shows when
  it sends nothing, the comparison an outside benchmark often makes;
* ``aio``: the shipped server (:class:`movierec.server.app.RecommenderServer`):
  answers from each user's precomputed ranking prefix (:mod:`movierec.index.ranked`),
  stream messages pipelined and batched;
* ``aio-scan``: the same with ``ranked_depth=0``: every request scans the catalogue;
* ``aio-direct``: the shipped engine, but each stream message answered as it is
  read (``async for`` ... ``yield``), no pipeline or batching (measured alternative);
* ``sync``: the same engine behind a ``grpc.server`` thread pool (the
  alternative the issue asks to measure; not shipped).

Each server and each load generator runs in its own process (no shared GIL);
the load generator reports its own CPU use, and the floor it reaches against
the echo servers shows how much headroom it has. Servers are measured in
interleaved rounds (echo, ours, echo, ...) so background load on a shared
machine hits them alike; medians over rounds are reported.

Scenarios: unary k=10 with 1 call in flight (p50/p99, calls/s); one
bidirectional stream with 64 messages in flight (messages/s, errors); unary
latency with 0, 100 and 2,000 excluded items (shipped server only).

HTTP beside gRPC: the shipped server process also serves the HTTP/JSON API
(``recctl serve --http-port``, :mod:`movierec.server.http_api`), and the same
load generator process measures ``POST /recommend`` with the unary scenario's
requests as JSON, 1 call in flight over one keep-alive connection, with two
client libraries (the stdlib's ``http.client`` and httpx), right after the
gRPC scenarios of the same round, from a load generator process of its own.

Two load generators, each in its own process: this script's (grpcio blocking
stub for unary, a ``grpc.aio`` stream for the stream, every message parsed),
and an independent one (:func:`measure_raw_unary`, :func:`measure_raw_stream`:
plain grpcio sync channel, requests pre-serialised once, answers taken as
bytes and never parsed, the stream fed by a generator thread and read by the
main thread): a second opinion built differently, whose client CPU column says
whether it had headroom. Both are run against the floors and the shipped
server in the same round and reported side by side. The independent one
measures its four servers (all up at once) in alternating slices, the order
rotated each slice (:func:`measure_raw_paired`): on a shared machine a
server measured alone, seconds after another, sees different background
load, and single 1-second measurements then differ by 4x between rounds.

Before the rounds, the work our server adds to the floor is timed in process
(no gRPC): answering one request, the index search inside it (from the prefix
and by scanning), and one stream message in a batch, so the report can say
where the gap to the floor goes.

Usage::

    .venv/bin/python benchmarks/serve_bench.py [--index DIR] [--seconds 2] [--rounds 3]

``--index`` takes an index store (its ``CURRENT`` version is served, as by
``recctl serve``) or one version folder, e.g. ``build/serve/index`` from
``recctl index build --model build/serve/lightgcn --out build/serve/index``.

Without ``--index`` a synthetic MovieLens-1M-shaped model (6,040 users, 3,706
items, dimension 64, 165 rated items per user) is built in a temporary folder.
Loopback only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np

from movierec.index import Recommendation, build_index, limit_serving_threads, open_index
from movierec.server.app import DEFAULT_RANKED_DEPTH, RecommenderServer, ServerConfig, load_index
from movierec.server.engine import ServingEngine
from movierec.server.errors import RequestError
from movierec.server.limits import Limits
from movierec.server.servicer import RecommenderServicer
from movierec.server.state import ServingState
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

R = TypeVar("R", pb.RecommendResponse, pb.RecommendStreamResponse)

RESULTS_NAME = "serve"
SERVER_KINDS = ("echo-sync", "echo-aio", "echo-aio-empty", "aio", "aio-scan", "aio-direct", "sync")
SAME_SIZE_FLOORS = ("echo-sync", "echo-aio")
EMPTY_FLOOR = "echo-aio-empty"
# The independent load generator's scenarios, and the servers it measures (the floors and the shipped one).
RAW_SCENARIOS = {"raw-unary": "unary-0", "raw-stream": "stream"}
RAW_KINDS = (*SAME_SIZE_FLOORS, EMPTY_FLOOR, "aio")
SHIPPED = "aio"
SERVICE = "movierec.v1.RecommenderService"
RECOMMEND_STREAM = f"/{SERVICE}/RecommendStream"
K = 10
STREAM_IN_FLIGHT = 64
# The independent generator measures the floors and ours in alternating slices (order rotated each slice), all
# servers up at once, so a change in background load hits every server alike instead of whichever came last.
RAW_SLICES = 4
EXCLUSION_LEVELS = (0, 100, 2000)
# HTTP/JSON scenarios on the shipped server -> the client library that sends them; ratios use the first.
HTTP_SCENARIOS = {"http-stdlib": "stdlib", "http-httpx": "httpx"}
HTTP_SCENARIO = "http-stdlib"
SYNC_WORKERS = 8
ML1M_SHAPE = {"n_users": 6040, "n_items": 3706, "dim": 64, "seen_per_user": 165}
TARGETS = {
    "unary_p50_ms": 1.0,
    "unary_p99_ms": 3.0,
    "unary_share_of_floor": 0.70,
    "stream_share_of_floor": 0.70,
    "raw_unary_share_of_floor": 0.70,
    "raw_stream_share_of_floor": 0.70,
    "exclusion_2000_added": 0.20,
}


# ---------------------------------------------------------------- servers (child processes)


def canned_response_bytes(index_dir: Path) -> bytes:
    """A real 10-item answer, serialised once: what the echo servers send back (plus the request id)."""
    engine = ServingEngine(open_index(index_dir), Limits())
    (answer,) = engine.recommend([pb.RecommendRequest(user_id=int(engine.index.model.user_ids[0]), k=K)])
    assert not isinstance(answer, RequestError)
    response = pb.RecommendResponse(model_version=engine.model_version, index_version=engine.index_version)
    engine.write_items(response.items, answer)
    return response.SerializeToString()


def with_request_id(canned: bytes, request_id: str) -> bytes:
    """Prepend field 1 (request_id): protobuf merges fields in any order, so this is a valid message."""
    return pb.RecommendResponse(request_id=request_id).SerializeToString() + canned


def echo_handlers(canned: bytes, *, asynchronous: bool) -> grpc.GenericRpcHandler[Any, Any]:
    def unary(request: pb.RecommendRequest, context: Any) -> bytes:
        return with_request_id(canned, request.request_id)

    def stream(requests: Iterator[pb.RecommendStreamRequest], context: Any) -> Iterator[bytes]:
        for request in requests:
            yield with_request_id(canned, request.request_id)

    async def unary_async(request: pb.RecommendRequest, context: Any) -> bytes:
        return with_request_id(canned, request.request_id)

    async def stream_async(requests: Any, context: Any) -> Any:
        async for request in requests:
            yield with_request_id(canned, request.request_id)

    handlers = {
        "Recommend": grpc.unary_unary_rpc_method_handler(
            unary_async if asynchronous else unary, request_deserializer=pb.RecommendRequest.FromString
        ),
        "RecommendStream": grpc.stream_stream_rpc_method_handler(
            stream_async if asynchronous else stream, request_deserializer=pb.RecommendStreamRequest.FromString
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class SyncRecommender:
    """The measured alternative: the same engine behind a thread-pool server, one search per stream message.

    Only the two measured methods are served (a generic handler, not the full
    generated servicer): the other RPCs play no part in this benchmark.
    """

    def __init__(self, engine: ServingEngine) -> None:
        self._engine = engine

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        methods = {
            "Recommend": grpc.unary_unary_rpc_method_handler(
                self.Recommend,
                request_deserializer=pb.RecommendRequest.FromString,
                response_serializer=pb.RecommendResponse.SerializeToString,
            ),
            "RecommendStream": grpc.stream_stream_rpc_method_handler(
                self.RecommendStream,
                request_deserializer=pb.RecommendStreamRequest.FromString,
                response_serializer=pb.RecommendStreamResponse.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        (answer,) = self._engine.recommend([request])
        if isinstance(answer, RequestError):
            context.abort(answer.code, answer.message)
        return self._response(pb.RecommendResponse, request.request_id, answer)

    def RecommendStream(
        self, requests: Iterator[pb.RecommendStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.RecommendStreamResponse]:
        for request in requests:
            (answer,) = self._engine.recommend([request])
            if isinstance(answer, RequestError):
                yield pb.RecommendStreamResponse(request_id=request.request_id, error=answer.to_status())
            else:
                yield self._response(pb.RecommendStreamResponse, request.request_id, answer)

    def _response(self, response_type: type[R], request_id: str, answer: Recommendation) -> R:
        response = response_type(
            request_id=request_id, model_version=self._engine.model_version, index_version=self._engine.index_version
        )
        self._engine.write_items(response.items, answer)
        return response


class DirectStreamServicer(RecommenderServicer):
    """The measured alternative for streams: each message answered as soon as it is read, in the handler.

    No reader/answerer tasks, queues or batches: one ``async for`` over the
    requests and one ``yield`` per answer, like the echo server's stream.
    """

    async def RecommendStream(self, request_iterator: Any, context: Any) -> Any:
        async for request in request_iterator:
            for response in self._answer_stream_batch([request]):
                yield response


def run_sync_server(kind: str, index_dir: Path) -> None:
    limit_serving_threads()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SYNC_WORKERS))
    if kind == "echo-sync":
        server.add_generic_rpc_handlers((echo_handlers(canned_response_bytes(index_dir), asynchronous=False),))
    else:
        server.add_generic_rpc_handlers((SyncRecommender(ServingEngine(load_index(index_dir), Limits())).handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"PORT {port}", flush=True)
    stop.wait()
    server.stop(0)


async def run_aio_server(kind: str, index_dir: Path) -> None:
    limit_serving_threads()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if kind in ("echo-aio", EMPTY_FLOOR, "aio-direct"):
        server = grpc.aio.server()
        if kind != "aio-direct":
            canned = b"" if kind == EMPTY_FLOOR else canned_response_bytes(index_dir)
            server.add_generic_rpc_handlers((echo_handlers(canned, asynchronous=True),))
        else:
            state = ServingState()
            state.publish(ServingEngine(load_index(index_dir), Limits()))
            pb_grpc.add_RecommenderServiceServicer_to_server(DirectStreamServicer(state), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"PORT {port}", flush=True)
        await stop.wait()
        await server.stop(0)
        return
    ranked_depth = 0 if kind == "aio-scan" else DEFAULT_RANKED_DEPTH
    http_port = 0 if kind == SHIPPED else None  # the shipped server answers HTTP beside gRPC, as with --http-port
    config = ServerConfig(index_dir, max_stream_batch=STREAM_IN_FLIGHT, ranked_depth=ranked_depth, http_port=http_port)
    ours = RecommenderServer(config)
    port = await ours.start()
    await ours.load()
    print(f"PORT {port}" + ("" if ours.http is None else f" {ours.http.port}"), flush=True)
    await stop.wait()
    await ours.stop(0)


# ---------------------------------------------------------------- load generator (child process)


@dataclass(frozen=True)
class Workload:
    user_ids: list[int]
    item_ids: list[int]

    def unary_requests(self, n_excluded: int, count: int = 256) -> list[pb.RecommendRequest]:
        rng = np.random.default_rng(n_excluded)
        return [
            pb.RecommendRequest(
                request_id=str(i),
                user_id=self.user_ids[i % len(self.user_ids)],
                k=K,
                exclude_item_ids=rng.choice(self.item_ids, size=n_excluded, replace=False).tolist(),
            )
            for i in range(count)
        ]

    def stream_requests(self, count: int = 1024) -> list[pb.RecommendStreamRequest]:
        return [
            pb.RecommendStreamRequest(request_id=str(i), user_id=self.user_ids[i % len(self.user_ids)], k=K)
            for i in range(count)
        ]


def cpu_seconds() -> float:
    """CPU time of this (load generator) process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU time of another process so far (user + system, all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuWindow:
    """CPU used by the load generator and by the server over one measured window.

    Server CPU per call is the robust number on a shared machine: wall-clock
    throughput moves with whatever else runs, CPU spent per call much less so.
    """

    server_pid: int
    start_wall: float = 0.0
    start_client: float = 0.0
    start_server: float = 0.0

    def start(self) -> None:
        self.start_wall, self.start_client = time.perf_counter(), cpu_seconds()
        self.start_server = process_cpu_seconds(self.server_pid)

    def stop(self, calls: int) -> dict[str, float]:
        wall = time.perf_counter() - self.start_wall
        client = cpu_seconds() - self.start_client
        server = process_cpu_seconds(self.server_pid) - self.start_server
        return {
            "per_second": calls / wall,
            "client_cpu": client / wall,
            "server_cpu": server / wall,
            "server_cpu_us_per_call": 1e6 * server / max(calls, 1),
        }


def closed_loop(
    call: Callable[[int], bool], seconds: float, cpu: CpuWindow, failures: tuple[type[BaseException], ...]
) -> tuple[list[int], int, dict[str, Any]]:
    """One call in flight, back to back, after a short warm-up: ``call(i)`` sends the i-th request and says whether
    the answer was good. Returns each call's round-trip nanoseconds, the failed calls (a bad answer or one of
    ``failures`` raised) and the server's CPU over the measured window."""
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    n = 0
    while time.perf_counter() < warm_until:
        call(n)
        n += 1
    latencies: list[int] = []
    errors = 0
    cpu.start()
    end = time.perf_counter() + seconds
    while (now := time.perf_counter_ns()) < end * 1e9:
        try:
            errors += not call(len(latencies))
        except failures:
            errors += 1
        latencies.append(time.perf_counter_ns() - now)
    return latencies, errors, cpu.stop(len(latencies))


def latency_summary(latencies: Sequence[int], errors: int, usage: dict[str, Any]) -> dict[str, Any]:
    """A closed loop's calls, errors, p50/p99 in milliseconds and the server's CPU."""
    millis = np.asarray(latencies, dtype=np.float64) / 1e6
    return {
        "calls": len(latencies),
        "errors": errors,
        "p50_ms": float(np.percentile(millis, 50)),
        "p99_ms": float(np.percentile(millis, 99)),
        **usage,
    }


def measure_unary(
    target: str, requests: Sequence[pb.RecommendRequest], seconds: float, cpu: CpuWindow
) -> dict[str, Any]:
    """One call in flight, back to back, from a blocking stub: latency is the whole round trip."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel).Recommend

        def call(i: int) -> bool:  # an answer that arrives is good: only an RpcError fails
            stub(requests[i % len(requests)], timeout=5)
            return True

        return latency_summary(*closed_loop(call, seconds, cpu, (grpc.RpcError,)))


async def measure_stream(
    target: str, requests: Sequence[pb.RecommendStreamRequest], seconds: float, cpu: CpuWindow
) -> dict[str, Any]:
    """One bidirectional stream kept at STREAM_IN_FLIGHT outstanding messages by a writer and a reader task."""
    async with grpc.aio.insecure_channel(target) as channel:
        # The generated stub is typed for sync channels; an aio multi-callable opens the call in write mode.
        call = channel.stream_stream(
            RECOMMEND_STREAM,
            request_serializer=pb.RecommendStreamRequest.SerializeToString,
            response_deserializer=pb.RecommendStreamResponse.FromString,
        )(None)
        window = asyncio.Semaphore(STREAM_IN_FLIGHT)
        counts = {"received": 0, "errors": 0}
        writing = True

        async def writer() -> None:
            sent = 0
            while writing:
                await window.acquire()
                await call.write(requests[sent % len(requests)])
                sent += 1
            await call.done_writing()

        async def reader() -> None:
            async for response in call:
                counts["received"] += 1
                if response.error.code:
                    counts["errors"] += 1
                window.release()

        tasks = [asyncio.create_task(writer()), asyncio.create_task(reader())]
        await asyncio.sleep(min(0.5, seconds / 4))
        received0 = counts["received"]
        cpu.start()
        await asyncio.sleep(seconds)
        received = counts["received"] - received0
        usage = cpu.stop(received)
        writing = False
        window.release()  # unblock a writer waiting for room
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    return {"messages": received, "errors": counts["errors"], **usage}


def measure_http(
    target: str, requests: Sequence[pb.RecommendRequest], seconds: float, cpu: CpuWindow, client_kind: str
) -> dict[str, Any]:
    """``POST /recommend`` with the unary scenario's requests as JSON, one call in flight on one keep-alive
    connection: latency is the whole round trip, as for gRPC unary. ``client_kind``: ``stdlib``
    (``http.client``, which sends a small request in one write) or ``httpx``."""
    bodies = [
        json.dumps(
            {"request_id": r.request_id, "user_id": r.user_id, "k": r.k, "exclude_item_ids": list(r.exclude_item_ids)}
        ).encode()
        for r in requests
    ]
    headers = {"Content-Type": "application/json"}
    host, port = target.rsplit(":", 1)
    with contextlib.ExitStack() as stack:
        if client_kind == "httpx":
            client = stack.enter_context(httpx.Client(base_url=f"http://{target}", timeout=5))

            def post(body: bytes) -> tuple[int, bytes]:
                response = client.post("/recommend", content=body, headers=headers)
                return response.status_code, response.content

        else:
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            stack.callback(connection.close)

            def post(body: bytes) -> tuple[int, bytes]:
                connection.request("POST", "/recommend", body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()

        def call(i: int) -> bool:
            status, content = post(bodies[i % len(bodies)])
            return status == 200 and len(json.loads(content)["items"]) == K

        return latency_summary(*closed_loop(call, seconds, cpu, (OSError, httpx.HTTPError, http.client.HTTPException)))


def measure_raw_unary(target: str, payloads: Sequence[bytes], seconds: float, cpu: CpuWindow) -> dict[str, Any]:
    """The independent generator's unary scenario: 1 call in flight, pre-serialised requests, answers as bytes
    (no protobuf work on this side), from a plain grpcio sync channel."""
    with grpc.insecure_channel(target) as channel:
        # no serialisers: bytes in, bytes out
        send = channel.unary_unary(f"/{SERVICE}/Recommend", request_serializer=None, response_deserializer=None)

        def call(i: int) -> bool:  # an empty answer counts as a failure
            return bool(send(payloads[i % len(payloads)], timeout=5))

        latencies, errors, usage = closed_loop(call, seconds, cpu, (grpc.RpcError,))
    return {"calls": len(latencies), "errors": errors, "latencies_ns": latencies, **usage}


def measure_raw_stream(target: str, payloads: Sequence[bytes], seconds: float, cpu: CpuWindow) -> dict[str, Any]:
    """The independent generator's stream scenario: one bidirectional stream kept at STREAM_IN_FLIGHT outstanding
    messages, a generator (on grpc's sending thread) writing pre-serialised requests, this thread reading answers
    as bytes."""
    window = threading.Semaphore(STREAM_IN_FLIGHT)
    stop = threading.Event()

    def requests() -> Iterator[bytes]:
        sent = 0
        while not stop.is_set():
            if window.acquire(timeout=0.1):
                yield payloads[sent % len(payloads)]
                sent += 1

    received = errors = 0
    with grpc.insecure_channel(target) as channel:
        open_stream = channel.stream_stream(RECOMMEND_STREAM, request_serializer=None, response_deserializer=None)
        responses = open_stream(requests(), timeout=60 + 4 * seconds)
        warm_until = time.perf_counter() + min(0.5, seconds / 4)
        end = started = 0.0
        counted = 0
        try:
            for answer in responses:
                window.release()
                received += 1
                errors += not answer
                now = time.perf_counter()
                if not started and now >= warm_until:
                    started, end, counted = now, now + seconds, received
                    cpu.start()
                elif started and now >= end:
                    break
        finally:
            stop.set()
            responses.cancel()  # type: ignore[no-untyped-call]
        usage = cpu.stop(received - counted)
    return {"calls": received - counted, "errors": errors, **usage}


def combined_slices(slices: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One measurement from its slices: rates and CPU over the summed wall time, latency percentiles over every
    call of every slice."""
    calls = sum(int(s["calls"]) for s in slices)
    wall = sum(s["calls"] / s["per_second"] for s in slices if s["per_second"] > 0)
    result: dict[str, Any] = {
        "calls": calls,
        "errors": sum(int(s["errors"]) for s in slices),
        "per_second": calls / wall,
        "client_cpu": sum(s["client_cpu"] * s["calls"] / s["per_second"] for s in slices) / wall,
        "server_cpu": sum(s["server_cpu"] * s["calls"] / s["per_second"] for s in slices) / wall,
        "server_cpu_us_per_call": sum(s["server_cpu_us_per_call"] * s["calls"] for s in slices) / max(calls, 1),
    }
    if "latencies_ns" in slices[0]:
        millis = np.concatenate([np.asarray(s["latencies_ns"], dtype=np.float64) for s in slices]) / 1e6
        result["p50_ms"] = float(np.percentile(millis, 50))
        result["p99_ms"] = float(np.percentile(millis, 99))
    return result


def measure_raw_paired(
    servers: dict[str, tuple[str, int]], index_dir: Path, seconds: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """The independent generator's scenarios against every server in ``servers`` (kind -> target, pid), in
    RAW_SLICES alternating slices of ``seconds / RAW_SLICES`` each, the order rotated every slice."""
    index = open_index(index_dir, verify=False)
    workload = Workload(index.model.user_ids[:512].tolist(), index.model.item_ids.tolist())
    payloads = {
        "raw-unary": [r.SerializeToString() for r in workload.unary_requests(0)],
        "raw-stream": [r.SerializeToString() for r in workload.stream_requests()],
    }
    measure = {"raw-unary": measure_raw_unary, "raw-stream": measure_raw_stream}
    kinds = list(servers)
    results: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in kinds}
    for scenario in RAW_SCENARIOS:
        slices: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for slice_number in range(RAW_SLICES):
            for kind in kinds[slice_number % len(kinds) :] + kinds[: slice_number % len(kinds)]:
                target, pid = servers[kind]
                one = measure[scenario](target, payloads[scenario], seconds / RAW_SLICES, CpuWindow(pid))
                slices[kind].append(one)
        for kind in kinds:
            results[kind][scenario] = combined_slices(slices[kind])
    return results


def run_client(
    target: str,
    server_pid: int,
    index_dir: Path,
    scenarios: list[str],
    seconds: float,
    http_target: str | None = None,
) -> dict[str, Any]:
    index = open_index(index_dir, verify=False)
    workload = Workload(index.model.user_ids[:512].tolist(), index.model.item_ids.tolist())
    results: dict[str, Any] = {}
    for scenario in scenarios:
        if scenario == "stream":
            results[scenario] = asyncio.run(
                measure_stream(target, workload.stream_requests(), seconds, CpuWindow(server_pid))
            )
        elif scenario in HTTP_SCENARIOS:
            assert http_target is not None, "the server announced no HTTP port"
            requests = workload.unary_requests(0)
            kind = HTTP_SCENARIOS[scenario]
            results[scenario] = measure_http(http_target, requests, seconds, CpuWindow(server_pid), kind)
        else:  # "unary-<n excluded>"
            n_excluded = int(scenario.split("-")[1])
            requests = workload.unary_requests(n_excluded)
            results[scenario] = measure_unary(target, requests, seconds, CpuWindow(server_pid))
    return results


# ---------------------------------------------------------------- where the server's time goes (in process)


def in_process_costs(index_dir: Path, repeats: int = 5, calls: int = 400) -> dict[str, float]:
    """CPU per call of the work our server adds to the gRPC floor, measured without gRPC (best of ``repeats``).

    Server CPU per call over gRPC is roughly the floor's plus these: how much of
    the gap to the floor is the search itself and how much the engine around it.
    """
    limit_serving_threads()
    engine = ServingEngine(load_index(index_dir), Limits())
    index = engine.index
    scanning = load_index(index_dir, ranked_depth=0)
    workload = Workload(index.model.user_ids[:512].tolist(), index.model.item_ids.tolist())
    unary = workload.unary_requests(0)
    rows = [row for r in unary if (row := index.user_row(r.user_id)) is not None]
    state = ServingState()
    state.publish(engine)
    stream = RecommenderServicer(state)
    batch = workload.stream_requests(STREAM_IN_FLIGHT)

    def answer(request: pb.RecommendRequest) -> bytes:
        (result,) = engine.recommend([request])
        assert not isinstance(result, RequestError)
        response = pb.RecommendResponse(
            request_id=request.request_id, model_version=engine.model_version, index_version=engine.index_version
        )
        engine.write_items(response.items, result)
        return response.SerializeToString()

    check_same_answers([index.recommend([r], K)[0] for r in rows], [scanning.recommend([r], K)[0] for r in rows])
    vectors = index.model.user_vectors
    batches = max(1, calls // STREAM_IN_FLIGHT)
    # name -> (work for call i, calls per repeat, messages per call)
    workloads: dict[str, tuple[Callable[[int], object], int, int]] = {
        "ranked_search_us": (lambda i: index.recommend([rows[i % len(rows)]], K), calls, 1),
        "scan_search_us": (lambda i: scanning.recommend([rows[i % len(rows)]], K), calls, 1),
        "matrix_product_us": (lambda i: vectors[rows[i % len(rows)]] @ index.model.item_vectors.T, calls, 1),
        "unary_answer_us": (lambda i: answer(unary[i % len(unary)]), calls, 1),
        "stream_answer_us_per_msg": (
            lambda i: [r.SerializeToString() for r in stream._answer_stream_batch(batch)],
            batches,
            STREAM_IN_FLIGHT,
        ),
    }
    # Interleaved repeats (each workload once per repeat), so a burst of background load hits them alike.
    best = dict.fromkeys(workloads, float("inf"))
    for _ in range(repeats):
        for name, (work, n, per) in workloads.items():
            started = time.process_time()
            for i in range(n):
                work(i)
            best[name] = min(best[name], 1e6 * (time.process_time() - started) / (n * per))
    return best


def check_same_answers(ranked: Sequence[Recommendation], scanned: Sequence[Recommendation]) -> None:
    """The prefix path must give the (unary) scan's answers bit for bit before either is timed."""
    for ours, theirs in zip(ranked, scanned, strict=True):
        if not (np.array_equal(ours.item_rows, theirs.item_rows) and np.array_equal(ours.scores, theirs.scores)):
            raise SystemExit("the ranked prefixes and the scan disagree")


# ---------------------------------------------------------------- orchestration


class ServerProcess:
    def __init__(self, kind: str, index_dir: Path) -> None:
        self.kind = kind
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", "server", "--kind", kind, "--index", str(index_dir)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise SystemExit(f"{kind} server did not start: {line!r}")
        ports = line.split()[1:]
        self.target = f"127.0.0.1:{int(ports[0])}"
        self.http_target = f"127.0.0.1:{int(ports[1])}" if len(ports) > 1 else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def client_process(server: ServerProcess, index_dir: Path, scenarios: list[str], seconds: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--role", "client", "--target", server.target, "--index", str(index_dir)]
    command += ["--server-pid", str(server.process.pid)]
    command += ["--seconds", str(seconds), "--scenarios", ",".join(scenarios)]
    if server.http_target is not None:
        command += ["--http-target", server.http_target]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60 + 4 * seconds * len(scenarios))
    return dict(json.loads(out.stdout))


def paired_client_process(
    servers: dict[str, ServerProcess], index_dir: Path, seconds: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """The independent load generator, in a process of its own, against every server in ``servers`` at once."""
    pairs = ",".join(f"{kind}={server.target}={server.process.pid}" for kind, server in servers.items())
    command = [sys.executable, __file__, "--role", "paired-client", "--paired", pairs, "--index", str(index_dir)]
    command += ["--seconds", str(seconds)]
    timeout = 60 + 4 * seconds * len(servers) * len(RAW_SCENARIOS)
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=timeout)
    return dict(json.loads(out.stdout))


def scenarios_for(kind: str) -> list[str]:
    if kind == SHIPPED:
        return [f"unary-{n}" for n in EXCLUSION_LEVELS] + ["stream"]
    return ["unary-0", "stream"]


def run_rounds(index_dir: Path, rounds: int, seconds: float) -> dict[str, dict[str, list[dict[str, Any]]]]:
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {kind: {} for kind in SERVER_KINDS}
    for round_number in range(1, rounds + 1):
        kept: dict[str, ServerProcess] = {}  # the independent generator's servers, up until the round ends
        try:
            for kind in SERVER_KINDS:
                print(f"round {round_number}/{rounds}: {kind}", file=sys.stderr, flush=True)
                server = ServerProcess(kind, index_dir)
                if kind in RAW_KINDS:
                    kept[kind] = server
                try:
                    for scenario, result in client_process(server, index_dir, scenarios_for(kind), seconds).items():
                        raw[kind].setdefault(scenario, []).append(result)
                    if kind == SHIPPED:  # a load generator of its own (see http_section)
                        for scenario, result in client_process(server, index_dir, [*HTTP_SCENARIOS], seconds).items():
                            raw[kind].setdefault(scenario, []).append(result)
                finally:
                    if kind not in RAW_KINDS:
                        server.stop()
            print(f"round {round_number}/{rounds}: independent load generator", file=sys.stderr, flush=True)
            for kind, scenarios in paired_client_process(kept, index_dir, seconds).items():
                for scenario, result in scenarios.items():
                    raw[kind].setdefault(scenario, []).append(result)
        finally:
            for server in kept.values():
                server.stop()
    return raw


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def per_round(raw: dict[str, dict[str, list[dict[str, Any]]]], kind: str, scenario: str, key: str) -> list[float]:
    return [float(run[key]) for run in raw[kind][scenario]]


def round_ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def summarise(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians per server and scenario, and each target checked as the median of per-round ratios.

    Ratios are taken within a round (servers measured minutes apart at most),
    so a change in background load between rounds does not leak into them.
    """
    table = {
        kind: {scenario: median_of(runs) for scenario, runs in scenarios.items()} for kind, scenarios in raw.items()
    }
    echo = SAME_SIZE_FLOORS

    def floor_per_round(scenario: str, key: str, best: Any, kinds: Sequence[str] = echo) -> list[float]:
        return [best(values) for values in zip(*(per_round(raw, kind, scenario, key) for kind in kinds), strict=True)]

    def share(scenario: str, kinds: Sequence[str]) -> float:
        """Our rate over the floor's (the fastest of ``kinds``) in each round, median over rounds."""
        floor = floor_per_round(scenario, "per_second", max, kinds)
        return statistics.median(round_ratios(per_round(raw, SHIPPED, scenario, "per_second"), floor))

    floor_unary = floor_per_round("unary-0", "per_second", max)
    floor_stream = floor_per_round("stream", "per_second", max)
    checks = {
        "unary_p50_ms": table[SHIPPED]["unary-0"]["p50_ms"],
        "unary_p99_ms": table[SHIPPED]["unary-0"]["p99_ms"],
        "unary_share_of_floor": statistics.median(
            round_ratios(per_round(raw, SHIPPED, "unary-0", "per_second"), floor_unary)
        ),
        "stream_share_of_floor": statistics.median(
            round_ratios(per_round(raw, SHIPPED, "stream", "per_second"), floor_stream)
        ),
        "raw_unary_share_of_floor": share("raw-unary", echo),
        "raw_stream_share_of_floor": share("raw-stream", echo),
        "exclusion_2000_added": statistics.median(
            round_ratios(per_round(raw, SHIPPED, "unary-2000", "p50_ms"), per_round(raw, SHIPPED, "unary-0", "p50_ms"))
        )
        - 1.0,
    }
    # Both load generators side by side: our share of each floor (same-size best, same-size grpc.aio, empty).
    generators = {
        scenario: {
            "same_size": share(scenario, echo),
            "same_size_aio": share(scenario, ("echo-aio",)),
            "empty": share(scenario, (EMPTY_FLOOR,)),
        }
        for scenario in ("unary-0", "stream", *RAW_SCENARIOS)
    }
    # Supporting evidence that moves less with background load: the floor's server CPU per call over ours.
    cpu_shares = {
        scenario: statistics.median(
            round_ratios(
                floor_per_round(scenario, "server_cpu_us_per_call", min),
                per_round(raw, SHIPPED, scenario, "server_cpu_us_per_call"),
            )
        )
        for scenario in ("unary-0", "stream")
    }
    # HTTP beside gRPC, same server process and round: calls/s and server CPU per call, HTTP over gRPC unary.
    http_vs_grpc = {
        key: statistics.median(
            round_ratios(per_round(raw, SHIPPED, HTTP_SCENARIO, key), per_round(raw, SHIPPED, "unary-0", key))
        )
        for key in ("per_second", "server_cpu_us_per_call", "p50_ms")
    }
    passed = {
        name: (value <= TARGETS[name])
        if name in ("unary_p50_ms", "unary_p99_ms", "exclusion_2000_added")
        else (value >= TARGETS[name])
        for name, value in checks.items()
    }
    runs = [run for scenarios in raw.values() for results in scenarios.values() for run in results]
    return {
        "table": table,
        "checks": checks,
        "cpu_share_of_floor": cpu_shares,
        "http_vs_grpc": http_vs_grpc,
        "generators": generators,
        "targets": TARGETS,
        "passed": passed,
        "total_errors": sum(int(run["errors"]) for run in runs),
        "max_client_cpu": max(float(run["client_cpu"]) for run in runs),
        "raw": raw,
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "numpy": version("numpy"),
        "faiss": version("faiss-cpu"),
        "torch": "not imported by the server",
        "platform": platform.platform(),
    }


def write_results(out_dir: Path, summary: dict[str, Any], meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{RESULTS_NAME}.json").write_text(json.dumps({**meta, **summary}, indent=2) + "\n")
    (out_dir / f"{RESULTS_NAME}.md").write_text(markdown(summary, meta))


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    table, checks, passed, host = summary["table"], summary["checks"], summary["passed"], meta["machine"]
    cpu_share = summary["cpu_share_of_floor"]
    lines = [
        "# Serving benchmark (`benchmarks/serve_bench.py`)",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores, load average at start "
        f"{', '.join(f'{x:.1f}' for x in host['load_average_at_start'])} (shared with other work); Python "
        f"{host['python']}, grpcio {host['grpcio']}, protobuf {host['protobuf']}, numpy {host['numpy']}, "
        f"faiss {host['faiss']}; the server never imports torch.",
        f"Index: {meta['index']}. k={K}. {meta['rounds']} interleaved rounds, {meta['seconds']:g} s measured per "
        f"scenario after a warm-up; medians over rounds. Every server and the load generator run in separate "
        f"processes on 127.0.0.1. Wall time {meta['wall_seconds']:g} s.",
        "",
        "CPU columns: CPU seconds per wall second of the load generator (100% = one core) and of the server; "
        "server CPU per call is the number that moves least with background load.",
        "",
        "| server | unary calls/s | p50 ms | p99 ms | server CPU us/call | client CPU "
        "| stream msg/s (64 in flight) | server CPU us/msg | client CPU | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in SERVER_KINDS:
        unary, stream = table[kind]["unary-0"], table[kind]["stream"]
        lines.append(
            f"| {kind}{' (shipped)' if kind == SHIPPED else ''} | {unary['per_second']:,.0f} | {unary['p50_ms']:.3f} "
            f"| {unary['p99_ms']:.3f} | {unary['server_cpu_us_per_call']:,.0f} | {unary['client_cpu']:.0%} "
            f"| {stream['per_second']:,.0f} | {stream['server_cpu_us_per_call']:,.0f} | {stream['client_cpu']:.0%} "
            f"| {unary['errors'] + stream['errors']:.0f} |"
        )
    lines += [
        "",
        "Exclusions (shipped server, unary, 1 in flight, random known movie ids on top of the user's seen items):",
        "",
        "| excluded ids | p50 ms | p99 ms | server CPU us/call |",
        "|---:|---:|---:|---:|",
    ]
    for n in EXCLUSION_LEVELS:
        row = table[SHIPPED][f"unary-{n}"]
        lines.append(f"| {n:,} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['server_cpu_us_per_call']:,.0f} |")
    lines += [
        "",
        "Targets (floor = the faster of echo-sync and echo-aio in the same round; shares are medians of "
        "per-round ratios):",
        "",
        "| target | measured | goal | met |",
        "|---|---:|---:|:---:|",
        f"| unary p50 | {checks['unary_p50_ms']:.3f} ms | <= 1 ms | {_mark(passed['unary_p50_ms'])} |",
        f"| unary p99 | {checks['unary_p99_ms']:.3f} ms | <= 3 ms | {_mark(passed['unary_p99_ms'])} |",
        f"| unary calls/s vs floor | {checks['unary_share_of_floor']:.0%} | >= 70% "
        f"| {_mark(passed['unary_share_of_floor'])} |",
        f"| stream msg/s vs floor | {checks['stream_share_of_floor']:.0%} | >= 70% "
        f"| {_mark(passed['stream_share_of_floor'])} |",
        f"| unary calls/s vs floor, independent load generator | {checks['raw_unary_share_of_floor']:.0%} "
        f"| >= 70% | {_mark(passed['raw_unary_share_of_floor'])} |",
        f"| stream msg/s vs floor, independent load generator | {checks['raw_stream_share_of_floor']:.0%} "
        f"| >= 70% | {_mark(passed['raw_stream_share_of_floor'])} |",
        f"| p50 added by 2,000 exclusions | {checks['exclusion_2000_added']:+.0%} | <= +20% "
        f"| {_mark(passed['exclusion_2000_added'])} |",
        f"| errors (all runs) | {summary['total_errors']} | 0 | {_mark(summary['total_errors'] == 0)} |",
        "",
        f"Server CPU per call, floor over ours (1.0 = as cheap as a no-op server): unary "
        f"{cpu_share['unary-0']:.2f}, stream {cpu_share['stream']:.2f}.",
        "",
        cost_note(summary, meta["in_process"]),
        "",
        load_generator_note(summary),
        "",
        noise_note(table),
        "",
        choice_note(table),
        "",
        *generators_section(summary, meta),
        *http_section(summary),
    ]
    return "\n".join(lines)


def generators_section(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Both load generators against the same floors and our server, same rounds: where their shares differ."""
    table, shares = summary["table"], summary["generators"]
    names = {
        "unary-0": ("this script's", "unary, 1 in flight"),
        "stream": ("this script's", f"stream, {STREAM_IN_FLIGHT} in flight"),
        "raw-unary": ("independent", "unary, 1 in flight"),
        "raw-stream": ("independent", f"stream, {STREAM_IN_FLIGHT} in flight"),
    }
    lines = [
        "## Two load generators, three floors",
        "",
        "This script's load generator parses every answer (grpcio blocking stub for unary, a `grpc.aio` stream); "
        "the independent one (own process, plain grpcio sync channel) sends pre-serialised requests and takes "
        "answers as bytes, never parsed (its client CPU column says whether it had headroom), and measures the "
        f"four servers, all up, in {RAW_SLICES} alternating slices each, the order rotated every slice, so that "
        "background load hits them alike. Floors: echo-sync "
        f"and echo-aio answer with a real {K}-item response ({meta['response_bytes']} bytes, as ours), "
        f"echo-aio-empty with the request id alone ({meta['empty_response_bytes']} bytes). Rates are medians over "
        "rounds; shares are medians of per-round ratios (ours / floor).",
        "",
        "| load generator | scenario | ours /s | echo-sync /s | echo-aio /s | echo-aio-empty /s "
        "| ours / same-size floor | ours / echo-aio | ours / empty floor | server CPU us/call: ours, echo-aio, empty "
        "| client CPU vs ours, vs echo-aio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, (generator, shape) in names.items():
        rows = {kind: table[kind][scenario] for kind in RAW_KINDS}
        share = shares[scenario]
        lines.append(
            f"| {generator} | {shape} | {rows[SHIPPED]['per_second']:,.0f} | {rows['echo-sync']['per_second']:,.0f} "
            f"| {rows['echo-aio']['per_second']:,.0f} | {rows[EMPTY_FLOOR]['per_second']:,.0f} "
            f"| {share['same_size']:.0%} | {share['same_size_aio']:.0%} | {share['empty']:.0%} "
            f"| {rows[SHIPPED]['server_cpu_us_per_call']:,.0f}, {rows['echo-aio']['server_cpu_us_per_call']:,.0f}, "
            f"{rows[EMPTY_FLOOR]['server_cpu_us_per_call']:,.0f} "
            f"| {rows[SHIPPED]['client_cpu']:.0%}, {rows['echo-aio']['client_cpu']:.0%} |"
        )
    lines.append("")
    return lines


def http_section(summary: dict[str, Any]) -> list[str]:
    """HTTP/JSON beside gRPC on the shipped server: same process, index, requests and round."""
    table, ratio = summary["table"][SHIPPED], summary["http_vs_grpc"]
    http_parser = "httptools" if importlib.util.find_spec("httptools") else "h11"  # uvicorn's own choice
    lines = [
        "## HTTP beside gRPC",
        "",
        f"The shipped server process serves both (`recctl serve --http-port`: FastAPI {version('fastapi')} on "
        f"uvicorn {version('uvicorn')} with {http_parser} parsing HTTP, on the gRPC server's event loop). Load: "
        "the unary scenario's "
        f"requests (k={K}, no extra exclusions, 512 users), 1 call in flight, back to back: gRPC through a "
        "blocking stub; HTTP as `POST /recommend` JSON over one keep-alive connection, from the standard "
        f"library's `http.client` and from httpx {version('httpx')} (each answer parsed and checked: 200 with "
        f"{K} items), right after the gRPC scenarios of the same round, from a load generator process of its own.",
        "",
        "| protocol | client | calls/s | p50 ms | p99 ms | server CPU us/call | client CPU | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("gRPC `Recommend`", "grpcio stub", table["unary-0"])]
    rows += [("HTTP `POST /recommend`", client, table[scenario]) for scenario, client in HTTP_SCENARIOS.items()]
    for name, client, row in rows:
        lines.append(
            f"| {name} | {client} | {row['per_second']:,.0f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} "
            f"| {row['server_cpu_us_per_call']:,.0f} | {row['client_cpu']:.0%} | {row['errors']:.0f} |"
        )
    lines += [
        "",
        f"HTTP (`http.client`) over gRPC, medians of per-round ratios: calls/s {ratio['per_second']:.2f}x, p50 "
        f"{ratio['p50_ms']:.2f}x, server CPU per call {ratio['server_cpu_us_per_call']:.2f}x. Server CPU per "
        "call is the figure to compare: it moves little with the client library, wall-clock rows a lot.",
        "",
    ]
    return lines


def cost_note(summary: dict[str, Any], costs: dict[str, float]) -> str:
    """Split the shipped server's CPU per call into the gRPC floor, the search, and the rest of our work."""
    table = summary["table"]
    floor_unary = min(table[kind]["unary-0"]["server_cpu_us_per_call"] for kind in ("echo-sync", "echo-aio"))
    ours_unary = table[SHIPPED]["unary-0"]["server_cpu_us_per_call"]
    return (
        "Where the unary server CPU goes (in-process CPU per call, no gRPC, best of 5, same requests): "
        f"answering one request costs {costs['unary_answer_us']:,.0f} us (validation, search, response build and "
        f"serialisation), of which the search (`ServingIndex.recommend`, one user) is "
        f"{costs['ranked_search_us']:,.0f} us from the ranked prefix and would be {costs['scan_search_us']:,.0f} us "
        f"scanning the catalogue (the matrix product alone: {costs['matrix_product_us']:,.0f} us); answers checked "
        f"identical, scores included. Over gRPC our server spent {ours_unary:,.0f} us per call and the cheapest "
        f"no-op server {floor_unary:,.0f} us, a gap of {ours_unary - floor_unary:,.0f} us. One stream message "
        f"answered in a batch of {STREAM_IN_FLIGHT} costs {costs['stream_answer_us_per_msg']:,.0f} us in process."
    )


def choice_note(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """What this run says about the shipped design, in server CPU per call (the least noisy column)."""

    def cpu(kind: str, scenario: str) -> float:
        return table[kind][scenario]["server_cpu_us_per_call"]

    return (
        "Choices, in server CPU per call: ranked prefixes (aio) against scanning every request (aio-scan): "
        f"unary {cpu('aio', 'unary-0'):,.0f} vs {cpu('aio-scan', 'unary-0'):,.0f} us, stream "
        f"{cpu('aio', 'stream'):,.0f} vs {cpu('aio-scan', 'stream'):,.0f} us. Pipelined, batched stream (aio) against "
        f"answering each message in the handler (aio-direct): {cpu('aio', 'stream'):,.0f} vs "
        f"{cpu('aio-direct', 'stream'):,.0f} us per message. grpc.aio against a sync thread pool: unary "
        f"{cpu('aio', 'unary-0'):,.0f} vs {cpu('sync', 'unary-0'):,.0f} us, stream {cpu('aio', 'stream'):,.0f} vs "
        f"{cpu('sync', 'stream'):,.0f} us. Beyond these numbers, a sync server holds one pool thread per open "
        "stream for the stream's whole life, and the project's auth and metrics interceptors are `grpc.aio` ones."
    )


def noise_note(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """aio and aio-direct answer unary calls with the same code: their spread is pure noise."""
    rates = [table[kind]["unary-0"]["per_second"] for kind in ("aio", "aio-direct")]
    return (
        "Noise: `aio` and `aio-direct` run identical code for unary calls, so the spread of their unary calls/s "
        f"({min(rates):,.0f} to {max(rates):,.0f}, {max(rates) / min(rates):.2f}x) is what background load alone "
        "does to one row here; trust ratios within a round and the CPU-per-call columns more than any single "
        "wall-clock figure. On a busy machine a server with more threads also gets a larger share of the CPU "
        "from the scheduler, which flatters `sync` in wall-clock terms."
    )


def load_generator_note(summary: dict[str, Any]) -> str:
    """Whether the load generator could have capped our numbers, from this run's own data."""
    raw, table = summary["raw"], summary["table"]
    best = {
        scenario: max(run["per_second"] for kind in ("echo-sync", "echo-aio") for run in raw[kind][scenario])
        for scenario in ("unary-0", "stream")
    }
    headroom = all(best[s] > table[SHIPPED][s]["per_second"] for s in best)
    verdict = (
        "more than ours (median) in both, so it did not cap our rows"
        if headroom
        else "not more than ours in every scenario, so this run cannot rule out that it capped them"
    )
    ours_peak = max(float(run["client_cpu"]) for results in raw[SHIPPED].values() for run in results)
    saturation = (
        f" (against our server at most {ours_peak:.0%}; against the no-op servers close to a full core, so the "
        "floor may be understated and our shares of it overstated)"
        if summary["max_client_cpu"] >= 0.9
        else ", so it was never saturated"
    )
    return (
        "Load generators: one process per server and round (the independent one: one per round); their CPU use "
        f"peaked at {summary['max_client_cpu']:.0%} of "
        f"one core{saturation}. Against the no-op servers this script's reached up to "
        f"{best['unary-0']:,.0f} calls/s and {best['stream']:,.0f} msg/s, {verdict}. With fewer free cores than "
        "busy processes, client and server also compete for CPU, which slows every row alike."
    )


def _mark(ok: bool) -> str:
    return "yes" if ok else "NO"


def synthetic_index(workdir: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bundle_factory import make_model_bundle

    model = make_model_bundle(workdir / "model", seed=7, **ML1M_SHAPE)
    return build_index(model, workdir / "index")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--index", type=Path, help="index store or version (default: synthetic ML-1M shape)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per scenario (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--role", choices=("main", "server", "client", "paired-client"), default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--paired", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=SERVER_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--http-target", help=argparse.SUPPRESS)
    parser.add_argument("--scenarios", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "server":
        if args.kind in ("sync", "echo-sync"):
            run_sync_server(args.kind, args.index)
        else:
            asyncio.run(run_aio_server(args.kind, args.index))
        return 0
    if args.role == "paired-client":
        servers = {}
        for pair in args.paired.split(","):
            kind, target, pid = pair.split("=")
            servers[kind] = (target, int(pid))
        print(json.dumps(measure_raw_paired(servers, args.index, args.seconds)))
        return 0
    if args.role == "client":
        scenarios = args.scenarios.split(",")
        results = run_client(args.target, args.server_pid, args.index, scenarios, args.seconds, args.http_target)
        print(json.dumps(results))
        return 0

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as workdir:
        index_dir = args.index if args.index is not None else synthetic_index(Path(workdir))
        index = open_index(index_dir)
        source = str(index.model.dataset.get("name", "unknown data")) if args.index else "synthetic ML-1M-shaped"
        seen = index.model.seen.nnz / max(index.n_users, 1)
        index_label = (
            f"{index.kind} index of a {source} model, "
            f"{index.n_users:,} users x {index.n_items:,} items, dim {index.model.dim}, {seen:.0f} seen items per user"
        )
        meta = {"machine": machine(), "index": index_label, "rounds": args.rounds, "seconds": args.seconds}
        meta["in_process"] = in_process_costs(index_dir)
        meta["response_bytes"] = len(with_request_id(canned_response_bytes(index_dir), "1023"))
        meta["empty_response_bytes"] = len(with_request_id(b"", "1023"))
        summary = summarise(run_rounds(index_dir, args.rounds, args.seconds))
    meta["wall_seconds"] = round(time.time() - started, 1)
    write_results(args.out, summary, meta)
    print((args.out / f"{RESULTS_NAME}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
