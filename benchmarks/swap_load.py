"""Hot swap under full load: a stream runs flat out while the index is rebuilt and swapped N times.

One ``recctl serve`` process (its own GIL) follows an index store. This
process streams recommendations over loopback as fast as the server answers
(a fixed number of messages in flight, to 256 users so each is asked again
soon after an event), records "watched" events (a user's current top item)
meanwhile, and rebuilds the index ``--swaps`` times, each rebuild compacting
the interaction log (what ``recctl index rebuild --events`` does); the server
swaps to each new version on its own (``--poll``) and truncates the log.

Every response is checked:

* no failed request (no error status on any message, the stream never breaks);
* no exclusion violation: no recommended item is in the user's seen set or
  among the events acknowledged *before the request was sent*;
* its version is one that was built and made current before it arrived, and
  versions never go backwards along the stream.

Bounded in time (``--seconds``) and in count (``--max-messages``); loopback
only; the server is stopped at the end. By default two synthetic
MovieLens-1M-shaped models (6,040 users, 3,706 items, dimension 64, 165 rated
items per user; same users and seen sets, different item vectors) alternate,
so every swap changes the answers; ``--model DIR`` rebuilds a real model bundle
instead.

Usage::

    .venv/bin/python benchmarks/swap_load.py [--swaps 10] [--seconds 150] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import numpy as np
from peers.machine import describe_machine

from movierec.bundle import VersionedStore, read_model_bundle, write_model_bundle
from movierec.index import build_index
from movierec.server.interaction_log import LOG_FILE_NAME, InteractionLog
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
RECCTL = str(Path(sys.executable).with_name("recctl"))
ML1M_SHAPE = {"n_users": 6040, "n_items": 3706, "dim": 64, "seen_per_user": 165}
K = 10
IN_FLIGHT = 64
RECORD_EVERY_S = 0.01
# Requests go to this many users, so each is asked again soon after one of its events is acknowledged.
HOT_USERS = 256
SWAP_TIMEOUT_S = 60.0


@dataclass
class Tally:
    """What the response checker has seen; touched only by the reader thread until the run ends."""

    responses: int = 0
    failed: int = 0
    violations: int = 0
    live_checked: int = 0
    unknown_version: int = 0
    backwards: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_seen: dict[str, float] = field(default_factory=dict)
    stream_error: str = ""


class Live:
    """Acknowledged events per user (id -> list of (ack time, item id)), shared by recorder and checker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[int, list[tuple[float, int]]] = {}
        self.recorded = 0

    def add(self, user_id: int, item_id: int, acked_at: float) -> None:
        with self._lock:
            self._events.setdefault(user_id, []).append((acked_at, item_id))
            self.recorded += 1

    def before(self, user_id: int, sent_at: float) -> set[int]:
        with self._lock:
            return {item for acked, item in self._events.get(user_id, ()) if acked <= sent_at}


def synthetic_models(workdir: Path) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bundle_factory import make_bundle

    paths = []
    for seed in (1, 2):
        vectors = np.random.default_rng(100 + seed).standard_normal((ML1M_SHAPE["n_items"], ML1M_SHAPE["dim"]))
        bundle = make_bundle(**ML1M_SHAPE, seed=7, item_vectors=vectors.astype(np.float32))
        write_model_bundle(bundle, workdir / f"model{seed}")
        paths.append(workdir / f"model{seed}")
    return paths


def start_server(store: Path, poll: float) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [RECCTL, "serve", "--json", "--port", "0", "--index", str(store), "--poll", str(poll), "--grace", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    port = 0
    for line in _lines(process.stdout):
        event = json.loads(line)
        port = event.get("port", port)
        if event["event"] == "serving":
            return process, int(port)
    process.kill()
    raise RuntimeError("the server exited before SERVING")


def _lines(stream: IO[str]) -> Iterator[str]:
    yield from stream


def run(
    models: Sequence[Path], workdir: Path, swaps: int, seconds: float, max_messages: int, poll: float
) -> dict[str, Any]:
    store = workdir / "index"
    build_index(models[0], store)
    built_at: dict[str, float] = {"v0001": time.monotonic()}
    model = read_model_bundle(models[0], verify=False)
    user_ids = model.user_ids.tolist()
    seen = [set(model.item_ids[model.seen.row(row)].tolist()) for row in range(model.n_users)]
    process, port = start_server(store, poll)
    tally, live = Tally(), Live()
    latest_top: dict[int, int] = {}
    stop = threading.Event()
    slots = threading.Semaphore(IN_FLIGHT)
    sent: queue.Queue[tuple[int, float]] = queue.Queue()
    started = time.monotonic()

    def requests() -> Iterator[pb.RecommendStreamRequest]:
        rng = np.random.default_rng(0)
        hot = rng.choice(len(user_ids), size=min(HOT_USERS, len(user_ids)), replace=False)
        count = 0
        while not stop.is_set() and count < max_messages and time.monotonic() - started < seconds:
            if not slots.acquire(timeout=1.0):
                continue
            row = int(hot[rng.integers(hot.size)])
            sent.put((row, time.monotonic()))
            yield pb.RecommendStreamRequest(request_id=str(count), user_id=user_ids[row], k=K)
            count += 1

    def read(call: Any) -> None:
        newest = ""
        try:
            for response in call:
                row, sent_at = sent.get_nowait()
                now = time.monotonic()
                slots.release()
                tally.responses += 1
                tally.latencies_s.append(now - sent_at)
                if response.error.code != 0:
                    tally.failed += 1
                    continue
                version = response.index_version
                if version not in built_at or built_at[version] > now:
                    tally.unknown_version += 1
                if version < newest:
                    tally.backwards += 1
                newest = max(newest, version)
                tally.first_seen.setdefault(version, now)
                items = [item.item_id for item in response.items]
                watched = live.before(user_ids[row], sent_at)
                tally.live_checked += bool(watched)
                forbidden = seen[row] | watched
                tally.violations += sum(item in forbidden for item in items)
                latest_top[row] = items[0]
        except grpc.RpcError as exc:
            tally.stream_error = f"{exc.code().name}: {exc.details()}"

    def record(stub: pb_grpc.RecommenderServiceStub) -> None:
        """Mark a user's current top item as watched; from the acknowledgement on it must never come back."""
        while not stop.is_set():
            time.sleep(RECORD_EVERY_S)
            try:
                row, item = latest_top.popitem()  # atomic: the reader keeps adding meanwhile
            except KeyError:
                continue
            stub.RecordInteractions(pb.RecordInteractionsRequest(user_id=user_ids[row], item_ids=[item]), timeout=10)
            live.add(user_ids[row], item, time.monotonic())

    swap_seconds: list[float] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        call = stub.RecommendStream(requests())
        reader = threading.Thread(target=read, args=(call,), daemon=True)
        recorder = threading.Thread(target=record, args=(stub,), daemon=True)
        reader.start()
        recorder.start()
        for swap in range(swaps):
            if time.monotonic() - started > seconds:
                break
            time.sleep(1.0)
            with InteractionLog(store / LOG_FILE_NAME) as log:
                events = log.export()
            version = VersionedStore(store).next_version()
            built_at[version] = time.monotonic()  # CURRENT moves inside build_index: answers may come before it returns
            if build_index(models[(swap + 1) % len(models)], store, new_events=events).name != version:
                raise RuntimeError("another process is building into the benchmark's store")
            while version not in tally.first_seen and time.monotonic() - built_at[version] < SWAP_TIMEOUT_S:
                time.sleep(0.01)
            if version in tally.first_seen:
                swap_seconds.append(tally.first_seen[version] - built_at[version])
        time.sleep(1.0)
        stop.set()
        reader.join(60)
        recorder.join(30)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    elapsed = time.monotonic() - started
    process.terminate()
    process.wait(30)
    latencies = sorted(tally.latencies_s)
    return {
        "swaps_requested": swaps,
        "versions_built": sorted(built_at),
        "versions_answered": sorted(tally.first_seen),
        "server_swap_count": info.swap_count,
        "server_last_reload_error": info.last_reload_error,
        "events_recorded": live.recorded,
        "events_compacted_in_final_version": info.events_through,
        "responses": tally.responses,
        "failed": tally.failed,
        "stream_error": tally.stream_error,
        "exclusion_violations": tally.violations,
        "responses_checked_against_live_events": tally.live_checked,
        "responses_from_unknown_version": tally.unknown_version,
        "responses_from_older_version": tally.backwards,
        "seconds": round(elapsed, 1),
        "messages_per_second": round(tally.responses / elapsed, 1),
        "latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 2) if latencies else None,
            "p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else None,
            "max": round(1000 * latencies[-1], 2) if latencies else None,
        },
        "swap_visible_after_build_s": {
            "median": round(statistics.median(swap_seconds), 2) if swap_seconds else None,
            "max": round(max(swap_seconds), 2) if swap_seconds else None,
        },
    }


def passed(result: dict[str, Any]) -> bool:
    return bool(
        result["failed"] == 0
        and not result["stream_error"]
        and result["exclusion_violations"] == 0
        and result["responses_from_unknown_version"] == 0
        and result["responses_from_older_version"] == 0
        and result["server_swap_count"] == result["swaps_requested"]
        and result["versions_answered"] == result["versions_built"]
    )


def markdown(result: dict[str, Any], machine: dict[str, Any], command: str, data: str) -> str:
    verdict = "PASS" if passed(result) else "FAIL"
    latency = result["latency_ms"]
    lines = [
        "# Hot swap under load",
        "",
        f"`{command}` — {data}; {IN_FLIGHT} stream messages in flight, k={K}, one `recctl serve` process "
        f"(polls CURRENT every {result['poll_seconds']} s) and this load generator on the same machine.",
        "",
        f"**{verdict}**: {result['server_swap_count']} swaps (of {result['swaps_requested']} requested) while "
        f"{result['responses']:,} stream responses were checked.",
        "",
        "| check | result |",
        "|---|---|",
        f"| failed requests (error status or broken stream) | {result['failed']}"
        f"{' / ' + result['stream_error'] if result['stream_error'] else ''} |",
        f"| exclusion violations (seen set + events acknowledged before the request) | "
        f"{result['exclusion_violations']} |",
        f"| responses whose user had acknowledged live events (checked against them) | "
        f"{result['responses_checked_against_live_events']:,} |",
        f"| responses from a version not yet built | {result['responses_from_unknown_version']} |",
        f"| responses from an older version after a newer one | {result['responses_from_older_version']} |",
        f"| versions built / answered | {len(result['versions_built'])} / {len(result['versions_answered'])} |",
        f"| live events recorded during the run / compacted into the final version | {result['events_recorded']} / "
        f"{result['events_compacted_in_final_version']} (log offset) |",
        f"| reload errors | {result['server_last_reload_error'] or 'none'} |",
        "",
        "| throughput and latency | value |",
        "|---|---|",
        f"| stream messages/s (whole run, swaps included) | {result['messages_per_second']:,} |",
        f"| latency p50 / p99 / max (ms, send to answer, {IN_FLIGHT} in flight) | "
        f"{latency['p50']} / {latency['p99']} / {latency['max']} |",
        f"| build finished -> first answer from it (s), median / max | "
        f"{result['swap_visible_after_build_s']['median']} / {result['swap_visible_after_build_s']['max']} |",
        "",
        "The build-to-answer time includes the poll interval, the checksum verification of the whole bundle and "
        "the warm-up, all done beside the serving version; the stream is answered by the old version meanwhile.",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, load average "
        f"{machine['load_average_1_5_15']} at the end (shared machine), Python {machine['python']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=150.0, help="upper bound on the whole run")
    parser.add_argument("--max-messages", type=int, default=5_000_000, help="upper bound on stream messages")
    parser.add_argument("--poll", type=float, default=0.1, help="the server's CURRENT poll interval")
    parser.add_argument("--model", type=Path, help="a real model bundle (default: two synthetic ML-1M-shaped ones)")
    parser.add_argument("--out", type=Path, default=RESULTS / "swap_load", help="results path without suffix")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swap_load_") as workdir:
        models = [args.model] if args.model is not None else synthetic_models(Path(workdir))
        data = f"model bundle {args.model}" if args.model else "synthetic MovieLens-1M-shaped models"
        result = run(models, Path(workdir), args.swaps, args.seconds, args.max_messages, args.poll)
    result["poll_seconds"] = args.poll
    machine = describe_machine()
    command = "python benchmarks/swap_load.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"command": command.strip(), "data": data, "result": result, "machine": machine}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text(markdown(result, machine, command.strip(), data))
    print(args.out.with_suffix(".md").read_text())
    return 0 if passed(result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
