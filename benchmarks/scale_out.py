"""Scale-out serving, measured side by side in one run: workers, batches, replicas sharing events, a replica kill.

* memory: summed PSS (``/proc/PID/smaps_rollup``) of ``recctl serve --workers 2``
  (parent included) against one ``recctl serve`` process;
* unary calls/s and stream messages/s with 1 and 2 workers, and the servers'
  CPU per call (every server process's user + system time over the run);
* ``RecommendBatch`` users/s at batch 100 against unary calls/s (1 worker);
* event lag across two replicas sharing a redis-server (record on one, poll
  the other until the item is excluded): p50/p99;
* calls and failures while one of two replicas is killed with SIGKILL under
  load (client: several targets, ``round_robin`` + UNAVAILABLE retries).

The load generators run on the same machine as the servers (separate
processes, each with its own connections), so on a 2-core host the second
worker competes with them for the same cores: the 2-worker numbers show what
this machine allows, not what a host with spare cores would. Every server is
run with ``nice`` 0 and the load generators likewise; run the whole script
under ``nice -n 10`` on a shared machine.

Usage::

    nice -n 10 .venv/bin/python benchmarks/scale_out.py [--seconds 3] [--index DIR]

Without ``--index``, a synthetic MovieLens-1M-shaped model (6,040 users, 3,706
items, dimension 64, 165 rated items per user) is indexed in a temporary folder.
The event-lag and kill scenarios need a redis-server (see tests/redis_harness.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_machine import machine_basics  # noqa: E402

from movierec.clients.client import RecommenderClient, RecommenderError  # noqa: E402
from movierec.v1 import recommender_pb2 as pb  # noqa: E402
from movierec.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402

RESULTS_NAME = "scale_out"
RECCTL = str(Path(sys.executable).with_name("recctl"))
ML1M_SHAPE = {"n_users": 6040, "n_items": 3706, "dim": 64, "seen_per_user": 165}
K = 10
CLIENT_PROCESSES = 2
THREADS_PER_CLIENT = 4
STREAM_IN_FLIGHT = 64
BATCH = 100
LAG_SAMPLES = 200


# -- servers --------------------------------------------------------------------------------------


class Server:
    """``recctl serve --json`` in a subprocess, started and read up to "serving"."""

    def __init__(self, index: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [RECCTL, "serve", "--json", "--port", "0", "--index", str(index), "--grace", "1", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: dict[str, dict[str, Any]] = {}
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            self.events[event["event"]] = event
            if event["event"] == "serving":
                break
        if "serving" not in self.events:
            raise RuntimeError(f"server did not start: {self.process.wait()}")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.events['listening']['port']}"

    @property
    def pids(self) -> list[int]:
        """Every process of this server: the workers and their parent, or the one process."""
        return [self.process.pid, *self.events["serving"].get("pids", [])]

    def cpu_seconds(self) -> float:
        return sum(_process_cpu_seconds(pid) for pid in self.pids)

    def pss_mib(self) -> float:
        return sum(_pss_kib(pid) for pid in self.pids) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


# -- load generators (each in its own process: no shared GIL) ------------------------------------


def _user_ids(n_users: int) -> list[int]:
    from bundle_factory import user_id_of_row

    return [user_id_of_row(row) for row in range(n_users)]


WARM_UP_S = 3.0
"""Clients start this long before the measured window (interpreter start, connections, first calls)."""


def unary_load(target: str, window: tuple[float, float], n_users: int, batch: int, results: Any) -> None:
    """THREADS_PER_CLIENT threads, each on its own connection, calling as fast as answers come back; counts
    the calls (users, for batches) answered inside ``window`` (wall-clock start, end)."""
    users = _user_ids(n_users)
    counts = [0] * THREADS_PER_CLIENT
    failures = [0] * THREADS_PER_CLIENT
    start, end = window

    def run(slot: int) -> None:
        with grpc.insecure_channel(target, options=[("grpc.channel_id", os.getpid() * 100 + slot)]) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            n = slot * 7919
            while (now := time.time()) < end:
                n += 1
                try:
                    if batch:
                        first = n * batch
                        queries = [pb.RecommendRequest(user_id=users[(first + i) % n_users], k=K) for i in range(batch)]
                        stub.RecommendBatch(pb.RecommendBatchRequest(requests=queries), timeout=10)
                    else:
                        stub.Recommend(pb.RecommendRequest(user_id=users[n % n_users], k=K), timeout=10)
                    if now >= start:
                        counts[slot] += batch or 1
                except grpc.RpcError:
                    failures[slot] += 1

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(THREADS_PER_CLIENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put({"calls": sum(counts), "failures": sum(failures)})


def stream_load(target: str, window: tuple[float, float], n_users: int, results: Any) -> None:
    """One bidirectional stream with STREAM_IN_FLIGHT messages in flight; counts answers inside ``window``."""
    users = _user_ids(n_users)
    in_flight = threading.Semaphore(STREAM_IN_FLIGHT)
    start, end = window

    def requests() -> Iterator[pb.RecommendStreamRequest]:
        n = os.getpid()
        while time.time() < end:
            in_flight.acquire()
            n += 1
            yield pb.RecommendStreamRequest(request_id=str(n), user_id=users[n % n_users], k=K)

    received = 0
    with grpc.insecure_channel(target, options=[("grpc.channel_id", os.getpid())]) as channel:
        for _ in pb_grpc.RecommenderServiceStub(channel).RecommendStream(requests(), timeout=end - start + 60):
            if start <= time.time() < end:
                received += 1
            in_flight.release()
    results.put({"calls": received, "failures": 0})


def run_load(server: Server, kind: str, seconds: float, n_users: int) -> dict[str, float]:
    """CLIENT_PROCESSES load processes against ``server``: rate and the server's CPU per call, both over the same
    wall-clock window (the clients count only answers inside it; the servers' CPU is read at its edges)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    window = (time.time() + WARM_UP_S, time.time() + WARM_UP_S + seconds)
    if kind == "stream":
        args: tuple[Any, ...] = (server.target, window, n_users, results)
    else:
        args = (server.target, window, n_users, BATCH if kind == "batch" else 0, results)
    target = stream_load if kind == "stream" else unary_load
    processes = [context.Process(target=target, args=args) for _ in range(CLIENT_PROCESSES)]
    for process in processes:
        process.start()
    time.sleep(max(0.0, window[0] - time.time()))
    cpu_before = server.cpu_seconds()
    time.sleep(max(0.0, window[1] - time.time()))
    cpu = server.cpu_seconds() - cpu_before
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    calls = sum(outcome["calls"] for outcome in outcomes)
    return {
        "per_second": calls / seconds,
        "calls": calls,
        "failures": sum(outcome["failures"] for outcome in outcomes),
        "server_cpu_us_per_call": 1e6 * cpu / calls if calls else float("nan"),
    }


# -- scenarios ------------------------------------------------------------------------------------


def memory_and_throughput(index: Path, seconds: float, rounds: int, n_users: int) -> dict[str, Any]:
    """Both servers up side by side (an idle one costs next to nothing), measured in interleaved rounds so the
    shared machine's background load hits them alike; medians over the rounds."""
    servers = {workers: Server(index, "--workers", str(workers)) for workers in (1, 2)}
    try:
        time.sleep(1.0)
        out: dict[str, Any] = {
            f"workers_{workers}": {"pss_mib": round(server.pss_mib(), 1), "processes": len(server.pids)}
            for workers, server in servers.items()
        }
        runs: dict[tuple[int, str], list[dict[str, float]]] = {}
        for _ in range(rounds):
            for kind in ("unary", "stream", "batch"):
                for workers, server in servers.items():
                    if kind == "batch" and workers != 1:
                        continue
                    runs.setdefault((workers, kind), []).append(run_load(server, kind, seconds, n_users))
        for (workers, kind), measured in runs.items():
            out[f"workers_{workers}"][kind] = {
                "per_second": statistics.median(m["per_second"] for m in measured),
                "server_cpu_us_per_call": statistics.median(m["server_cpu_us_per_call"] for m in measured),
                "failures": sum(m["failures"] for m in measured),
                "rounds": [m["per_second"] for m in measured],
            }
    finally:
        for server in servers.values():
            server.stop()
    out["pss_ratio_2_to_1"] = out["workers_2"]["pss_mib"] / out["workers_1"]["pss_mib"]
    return out


def memory_after_swap(workdir: Path) -> dict[str, Any]:
    """Summed PSS once a new version has been hot-swapped in: each worker then loads it on its own (what is
    memory-mapped, the model arrays and the ranked prefixes, is shared; the rest each worker holds itself), and
    the first version's memory goes back or stays behind."""
    from bundle_factory import make_model_bundle

    from movierec.index import build_index

    out: dict[str, Any] = {}
    for workers in (1, 2):
        store = workdir / f"swap-{workers}"
        build_index(make_model_bundle(store / "model-a", seed=7, **ML1M_SHAPE), store / "index")
        server = Server(store / "index", "--workers", str(workers), "--poll", "0.3")
        try:
            before = server.pss_mib()
            new = build_index(make_model_bundle(store / "model-b", seed=8, **ML1M_SHAPE), store / "index").name
            _wait_for_version(server.target, new)
            time.sleep(2.0)  # the old version's last references go
            out[f"workers_{workers}"] = {
                "pss_mib_before": round(before, 1),
                "pss_mib_after": round(server.pss_mib(), 1),
            }
        finally:
            server.stop()
    out["pss_ratio_2_to_1_after"] = out["workers_2"]["pss_mib_after"] / out["workers_1"]["pss_mib_after"]
    return out


def _wait_for_version(target: str, version: str, connections: int = 8, timeout_s: float = 120.0) -> None:
    """Until every one of several connections (so every worker, with near certainty) answers from ``version``."""
    channels = [grpc.insecure_channel(target, options=[("grpc.channel_id", n)]) for n in range(connections)]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            versions = {
                pb_grpc.RecommenderServiceStub(c).GetInfo(pb.GetInfoRequest(), timeout=10).index_version
                for c in channels
            }
            if versions == {version}:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{target} did not swap to {version}")
    finally:
        for channel in channels:
            channel.close()


def event_lag(index: Path, redis_url: str, n_users: int) -> dict[str, Any]:
    first, second = Server(index, "--events", redis_url), Server(index, "--events", redis_url)
    lags = []
    try:
        with RecommenderClient(first.target) as one, RecommenderClient(second.target) as other:
            users = _user_ids(n_users)
            for n in range(LAG_SAMPLES):
                user = users[(n * 31) % n_users]
                top = other.recommend(user, 1).items[0].item_id
                one.record_interactions(user, [top])
                acknowledged = time.perf_counter()
                while top in [item.item_id for item in other.recommend(user, 20).items]:
                    pass
                lags.append(time.perf_counter() - acknowledged)
    finally:
        first.stop()
        second.stop()
    lags.sort()
    return {
        "samples": len(lags),
        "p50_ms": 1000 * lags[len(lags) // 2],
        "p99_ms": 1000 * lags[min(len(lags) - 1, int(len(lags) * 0.99))],
        "max_ms": 1000 * lags[-1],
    }


def replica_kill(index: Path, seconds: float, n_users: int) -> dict[str, Any]:
    replicas = [Server(index), Server(index)]
    calls, failures = [0], [0]
    stop = threading.Event()
    users = _user_ids(n_users)
    try:
        with RecommenderClient([replica.target for replica in replicas], timeout=10) as client:

            def load(slot: int) -> None:
                n = slot
                while not stop.is_set():
                    n += THREADS_PER_CLIENT
                    try:
                        client.recommend(users[n % n_users], K)
                        calls[0] += 1
                    except RecommenderError:
                        failures[0] += 1

            threads = [threading.Thread(target=load, args=(slot,)) for slot in range(THREADS_PER_CLIENT)]
            for thread in threads:
                thread.start()
            time.sleep(seconds / 2)
            before = calls[0]
            replicas[0].process.kill()
            time.sleep(seconds / 2)
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        for replica in replicas:
            replica.stop()
    return {"calls": calls[0], "calls_before_kill": before, "failures": failures[0], "seconds": seconds}


# -- report ---------------------------------------------------------------------------------------


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{RESULTS_NAME}.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    w1, w2 = results["workers"]["workers_1"], results["workers"]["workers_2"]
    lines = [
        "# Scale-out serving",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_1min']} at the start, "
        f"Python {m['python']}, grpcio {m['grpcio']}. Index: {results['index']}. "
        f"Command: `{results['command']}`.",
        "",
        f"The load generators ({CLIENT_PROCESSES} processes x {THREADS_PER_CLIENT} connections for unary and batch, "
        f"{CLIENT_PROCESSES} streams x {STREAM_IN_FLIGHT} in flight) run on the same {m['cores']} cores as the "
        "servers: with 2 workers, the second worker competes with the load generator, so these rates are what "
        "this machine allows, not what a host with spare cores gives. Server CPU per call counts every server "
        "process (workers and parent). Both servers run side by side and are measured in interleaved rounds; "
        f"medians of {results['rounds']} rounds of {results['seconds']:g} s.",
        "",
        "## Workers (`recctl serve --workers N`)",
        "",
        "| workers | processes | summed PSS (MiB) | unary calls/s | server CPU/unary call (us) "
        "| stream msgs/s | server CPU/stream msg (us) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in (("1", w1), ("2", w2)):
        lines.append(
            f"| {name} | {row['processes']} | {row['pss_mib']:.1f} | {row['unary']['per_second']:,.0f} "
            f"| {row['unary']['server_cpu_us_per_call']:,.0f} | {row['stream']['per_second']:,.0f} "
            f"| {row['stream']['server_cpu_us_per_call']:,.0f} |"
        )
    batch = w1["batch"]
    swap = results["after_swap"]
    lines += [
        "",
        f"Summed PSS, 2 workers (parent included) / 1 process: **{results['workers']['pss_ratio_2_to_1']:.2f}x**"
        f" at start; after one hot swap (each worker loads the new version itself; its memory-mapped model arrays"
        f" and ranked prefixes are shared, the FAISS index and lookups are each worker's own; a mapped page counts"
        f" once touched): {swap['workers_2']['pss_mib_after']:.1f} / {swap['workers_1']['pss_mib_after']:.1f}"
        f" MiB = **{swap['pss_ratio_2_to_1_after']:.2f}x**.",
        "",
        "## RecommendBatch (1 worker)",
        "",
        f"Batch {BATCH}: **{batch['per_second']:,.0f} users/s** ({batch['server_cpu_us_per_call']:,.1f} us of "
        f"server CPU per user) against {w1['unary']['per_second']:,.0f} unary calls/s: "
        f"**{batch['per_second'] / max(w1['unary']['per_second'], 1e-9):.1f}x**.",
    ]
    lag = results.get("event_lag")
    if lag is not None:
        lines += [
            "",
            "## Event lag across replicas (Redis)",
            "",
            f"Two `recctl serve --events redis://...` replicas; RecordInteractions on one, Recommend on the other "
            f"until the item is gone, {lag['samples']} samples: p50 **{lag['p50_ms']:.1f} ms**, "
            f"p99 **{lag['p99_ms']:.1f} ms**, max {lag['max_ms']:.1f} ms (each poll is one Recommend call).",
        ]
    kill = results.get("replica_kill")
    if kill is not None:
        lines += [
            "",
            "## Killing a replica under load",
            "",
            f"One client over 2 replicas (round_robin, UNAVAILABLE retried), {THREADS_PER_CLIENT} threads for "
            f"{kill['seconds']:g} s, one replica killed with SIGKILL halfway: **{kill['calls']:,} calls, "
            f"{kill['failures']} failed** ({kill['calls_before_kill']:,} before the kill).",
        ]
    (out / f"{RESULTS_NAME}.md").write_text("\n".join(lines) + "\n")


def synthetic_index(workdir: Path) -> Path:
    from bundle_factory import make_model_bundle

    from movierec.index import build_index

    model = make_model_bundle(workdir / "model", seed=7, **ML1M_SHAPE)
    return build_index(model, workdir / "index")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--index", type=Path, help="index store or version (default: synthetic ML-1M shape)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per load run (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    from redis_harness import RedisServer, redis_server_binary

    from movierec.index import open_index

    with tempfile.TemporaryDirectory(prefix="scale-out-") as scratch:
        workdir = Path(scratch)
        index = args.index if args.index is not None else synthetic_index(workdir)
        n_users = open_index(index, verify=False).n_users
        results: dict[str, Any] = {
            "machine": machine_basics("grpcio", "numpy", "faiss-cpu"),
            "index": "synthetic ML-1M shape (6,040 users, 3,706 items, dim 64)" if args.index is None else str(index),
            "command": "nice -n 10 .venv/bin/python benchmarks/scale_out.py"
            + (f" --seconds {args.seconds:g}" if args.seconds != 2.0 else "")
            + (f" --rounds {args.rounds}" if args.rounds != 3 else ""),
            "workers": memory_and_throughput(index, args.seconds, args.rounds, n_users),
            "replica_kill": replica_kill(index, max(args.seconds, 4.0), n_users),
            "after_swap": memory_after_swap(workdir),
            "rounds": args.rounds,
            "seconds": args.seconds,
        }
        binary = redis_server_binary()
        if binary is not None:
            (workdir / "redis").mkdir()
            redis = RedisServer(binary, workdir / "redis")
            redis.start()
            try:
                results["event_lag"] = event_lag(index, redis.url, n_users)
            finally:
                redis.stop()
    write_report(results, args.out)
    print((args.out / f"{RESULTS_NAME}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
