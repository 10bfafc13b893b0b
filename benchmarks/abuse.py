"""Attacks on a running ``recctl serve``: the server's memory, a good client's worst latency, the codes returned.

One ``recctl serve`` process with the default admission settings (see README
"Hardening") serves a synthetic index built with ``tests/bundle_factory.py``.
A good client calls ``Recommend`` (k=10) back to back on its own connection
the whole time; each attack runs for a fixed window while a sampler reads the
server's RSS every 10 ms. Per attack: RSS before and at peak, the good
client's calls, worst and median latency and codes during the window, and the
codes the attacker got.

Attacks:

* ``stream flood 3.9 MB``: the issue's attack: 2 RecommendStream calls each
  sending 40 messages of 3.9 MB (3.9 M one-byte exclusion ids), never reading
  a reply;
* ``stream flood at the limit``: the same with messages just under the
  receive limit (so they are parsed, then refused as oversized);
* ``stream flood, valid messages``: 2 streams sending valid messages (max
  exclusions) as fast as flow control lets them, never reading a reply;
* ``many streams``: more streams than ``--max-streams``, each flooding;
* ``oversized unary``: Recommend with 3.9 MB messages;
* ``300k unknown genres``: the issue's filter of 300,000 unknown genre names;
* ``genres at the limit``: as many unknown genre names as fit in the limit;
* ``call flood``: more concurrent RecordInteractions calls than ``--max-concurrent-rpcs``;
* ``huge metadata``: calls with a 64 KiB header.

Usage::

    nice -n 10 .venv/bin/python benchmarks/abuse.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from bench_machine import machine_basics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bundle_factory import item_id_of_row, make_model_bundle, user_id_of_row

from movierec.index import build_index
from movierec.server.admission import receive_limit
from movierec.server.limits import DEFAULT_MAX_CONCURRENT_RPCS, DEFAULT_MAX_STREAMS, Limits
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
RECCTL = str(Path(sys.executable).with_name("recctl"))
SHAPE = {"n_users": 2000, "n_items": 1500, "dim": 32, "seen_per_user": 50}
ISSUE_MESSAGE_IDS = 3_900_000  # one-byte varints: a 3.9 MB message
# Clients accept anything: what is measured is what the server lets in and sends.
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_metadata_size", 1 << 20),
]


@dataclass
class Window:
    """What one attack did to the server and to the good client."""

    attack: str
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    good_calls: int = 0
    good_worst_ms: float = 0.0
    good_p99_ms: float = 0.0
    good_median_ms: float = 0.0
    good_codes: dict[str, int] = field(default_factory=dict)
    attacker_codes: dict[str, int] = field(default_factory=dict)
    note: str = ""


class RssSampler:
    """The server process's peak RSS since the last reset, sampled every 10 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        for line in self.status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS in {self.status}")

    def reset(self) -> None:
        self.peak = self.now()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class GoodClient:
    """Recommend (k=10) back to back from its own process (so the attackers' client threads cannot slow it
    through this process's GIL); each call kept as (monotonic start, latency, code)."""

    def __init__(self, target: str) -> None:
        context = multiprocessing.get_context("spawn")  # gRPC does not survive fork
        self._stop = context.Event()
        self._calls, sending = context.Pipe(duplex=False)
        self._process = context.Process(target=_call_back_to_back, args=(target, self._stop, sending), daemon=True)
        self._process.start()
        self.calls: list[tuple[float, float, str]] = []

    def close(self) -> None:
        self._stop.set()
        self.calls = self._calls.recv()
        self._process.join(30)

    def between(self, start: float, end: float) -> list[tuple[float, float, str]]:
        return [call for call in self.calls if start <= call[0] <= end]


def _call_back_to_back(target: str, stop: Any, sending: Any) -> None:
    calls: list[tuple[float, float, str]] = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        user = 0
        while not stop.is_set():
            user = (user + 1) % SHAPE["n_users"]
            request = pb.RecommendRequest(user_id=user_id_of_row(user), k=10)
            started = time.monotonic()
            try:
                stub.Recommend(request, timeout=10)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            calls.append((started, time.monotonic() - started, code))
            time.sleep(0.002)
    sending.send(calls)


def code_of(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


def stream_flood(
    target: str, streams: int, message: pb.RecommendStreamRequest, count: int, seconds: float
) -> Counter[str]:
    """``streams`` calls each sending ``count`` copies of ``message`` and never reading a reply; after
    ``seconds`` each is cancelled. Codes: how each call ended, plus how many messages the server took."""
    channel = grpc.insecure_channel(target, options=CLIENT_OPTIONS)
    stub = pb_grpc.RecommenderServiceStub(channel)
    taken = [0] * streams
    codes: Counter[str] = Counter()

    def sender(slot: int) -> Iterator[pb.RecommendStreamRequest]:
        for _ in range(count):
            yield message
            taken[slot] += 1

    calls = [stub.RecommendStream(sender(slot)) for slot in range(streams)]
    time.sleep(seconds)
    for call in calls:
        if call.done():  # type: ignore[attr-defined]
            codes[call.code().name] += 1
        else:
            codes["still open (cancelled by the attacker)"] += 1
            call.cancel()  # type: ignore[no-untyped-call]
    codes[f"messages taken by the server, of {streams * count}"] = sum(taken)
    channel.close()
    return codes


def concurrent_flood(target: str, calls: int) -> Counter[str]:
    """``calls`` RecordInteractions calls started at once, each for its own new user (each waits for its
    fsync on a worker thread, so they pile up on the server)."""
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.RecommenderServiceStub(channel)
    items = [item_id_of_row(row) for row in range(3)]
    started = [
        stub.RecordInteractions.future(pb.RecordInteractionsRequest(user_id=10**9 + i, item_ids=items))
        for i in range(calls)
    ]
    codes: Counter[str] = Counter()
    for call in started:
        codes[code_of(functools.partial(call.result, timeout=30))] += 1
    channel.close()
    return codes


def unary_repeat(
    target: str, make_call: Callable[[pb_grpc.RecommenderServiceStub], object], times: int
) -> Counter[str]:
    channel = grpc.insecure_channel(target, options=CLIENT_OPTIONS)
    stub = pb_grpc.RecommenderServiceStub(channel)
    codes = Counter(code_of(lambda: make_call(stub)) for _ in range(times))
    channel.close()
    return codes


def attacks(target: str, seconds: float, limit: int) -> list[tuple[str, Callable[[], Counter[str]], str]]:
    limits = Limits()
    issue = pb.RecommendStreamRequest(user_id=user_id_of_row(0), k=10, exclude_item_ids=[1] * ISSUE_MESSAGE_IDS)
    at_limit = pb.RecommendStreamRequest(user_id=user_id_of_row(0), k=10, exclude_item_ids=[1] * (limit - 64))
    valid = pb.RecommendStreamRequest(
        user_id=user_id_of_row(0), k=1000, exclude_item_ids=[item_id_of_row(r % 1500) for r in range(10_000)]
    )
    unknown_300k = pb.ItemFilter(include_genres=[f"no-such-genre-{i}" for i in range(300_000)])
    fitting = pb.ItemFilter(include_genres=[f"g{i:05d}" for i in range((limit - 1024) // 8)])
    user = user_id_of_row(1)
    return [
        (
            "none (baseline)",
            lambda: _idle(seconds),
            f"no attack for {seconds:g} s: the machine's own noise in the good client's latency",
        ),
        (
            "stream flood 3.9 MB",
            lambda: stream_flood(target, 2, issue, 40, seconds),
            f"2 streams x 40 messages of {issue.ByteSize() / 1e6:.1f} MB, replies never read",
        ),
        (
            "stream flood at the limit",
            lambda: stream_flood(target, 2, at_limit, 40, seconds),
            f"2 streams x 40 messages of {at_limit.ByteSize() / 1e3:.0f} kB, replies never read",
        ),
        (
            "stream flood, valid messages",
            lambda: stream_flood(target, 2, valid, 100_000, seconds),
            f"2 streams of {valid.ByteSize() / 1e3:.0f} kB messages (k=1000, {limits.max_exclude_item_ids:,} "
            "exclusions), replies never read",
        ),
        (
            "many streams",
            lambda: stream_flood(target, DEFAULT_MAX_STREAMS + 8, valid, 100_000, seconds),
            f"{DEFAULT_MAX_STREAMS + 8} streams (cap {DEFAULT_MAX_STREAMS}) of the valid messages, replies never read",
        ),
        (
            "oversized unary",
            lambda: unary_repeat(
                target,
                lambda stub: stub.Recommend(
                    pb.RecommendRequest(user_id=user, k=10, exclude_item_ids=issue.exclude_item_ids), timeout=30
                ),
                20,
            ),
            "20 Recommend calls of 3.9 MB",
        ),
        (
            "300k unknown genres",
            lambda: unary_repeat(
                target,
                lambda stub: stub.Recommend(pb.RecommendRequest(user_id=user, k=10, filter=unknown_300k), timeout=30),
                10,
            ),
            f"10 Recommend calls, 300,000 unknown genre names ({unknown_300k.ByteSize() / 1e6:.1f} MB)",
        ),
        (
            "genres at the limit",
            lambda: unary_repeat(
                target,
                lambda stub: stub.Recommend(pb.RecommendRequest(user_id=user, k=10, filter=fitting), timeout=30),
                20,
            ),
            f"20 Recommend calls, {len(fitting.include_genres):,} unknown genre names "
            f"({fitting.ByteSize() / 1e3:.0f} kB, under the limit)",
        ),
        (
            "call flood",
            lambda: concurrent_flood(target, 2 * DEFAULT_MAX_CONCURRENT_RPCS),
            f"{2 * DEFAULT_MAX_CONCURRENT_RPCS} RecordInteractions calls at once (cap {DEFAULT_MAX_CONCURRENT_RPCS})",
        ),
        (
            "huge metadata",
            lambda: unary_repeat(
                target,
                lambda stub: stub.Recommend(
                    pb.RecommendRequest(user_id=user, k=10), metadata=(("x-padding", "x" * 65536),), timeout=30
                ),
                20,
            ),
            "20 Recommend calls with a 64 KiB header",
        ),
    ]


def _idle(seconds: float) -> Counter[str]:
    time.sleep(seconds)
    return Counter()


def run(seconds: float, only: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        build_index(make_model_bundle(root / "model", **SHAPE), root / "index")
        log = open(root / "server.log", "w")  # noqa: SIM115 (closed below, after the server)
        server = subprocess.Popen(
            [RECCTL, "serve", "--json", "--port", "0", "--poll", "0", "--index", str(root / "index")],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = None
            for line in server.stdout:
                event = json.loads(line)
                port = event.get("port", port)
                if event["event"] == "serving":
                    break
            target = f"127.0.0.1:{port}"
            sampler = RssSampler(server.pid)
            good = GoodClient(target)
            time.sleep(1.0)
            limit = receive_limit(Limits(), max_batch_size=1000)
            windows: list[tuple[Window, float, float]] = []
            for name, attack, note in attacks(target, seconds, limit):
                if only is not None and only not in name:
                    continue
                time.sleep(0.5)
                window = Window(name, note=note, rss_before_mb=sampler.now() / 2**20)
                sampler.reset()
                start = time.monotonic()
                window.attacker_codes = dict(attack())
                end = time.monotonic()
                time.sleep(0.2)
                window.rss_peak_mb = sampler.peak / 2**20
                windows.append((window, start, end))
            good.close()
            for window, start, end in windows:
                calls = good.between(start, end)
                latencies = [latency * 1000 for _, latency, _ in calls]
                window.good_calls = len(calls)
                window.good_worst_ms = max(latencies, default=0.0)
                window.good_p99_ms = float(np.percentile(latencies, 99)) if latencies else 0.0
                window.good_median_ms = statistics.median(latencies) if latencies else 0.0
                window.good_codes = dict(Counter(code for _, _, code in calls))
                print(json.dumps(window.__dict__), flush=True)
            sampler.close()
            alive = server.poll() is None
        finally:
            server.kill()
            server.wait(10)
            log.close()
    return {
        "machine": machine_basics("grpcio", "protobuf"),
        "shape": SHAPE,
        "receive_limit_bytes": limit,
        "max_streams": DEFAULT_MAX_STREAMS,
        "max_concurrent_rpcs": DEFAULT_MAX_CONCURRENT_RPCS,
        "seconds_per_stream_attack": seconds,
        "server_alive_after": alive,
        "attacks": [window.__dict__ for window, _, _ in windows],
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    machine = result["machine"]
    lines = [
        "# Abuse: attacks on a running server",
        "",
        f"`nice -n 10 .venv/bin/python benchmarks/abuse.py --seconds {result['seconds_per_stream_attack']:g}`: "
        f"one `recctl serve` with the default admission settings (receive limit "
        f"{result['receive_limit_bytes'] // 1024} KiB, {result['max_streams']} streams, "
        f"{result['max_concurrent_rpcs']} calls) over a synthetic index ({result['shape']['n_users']:,} users, "
        f"{result['shape']['n_items']:,} items, dimension {result['shape']['dim']}). A good client calls "
        "Recommend (k=10) back to back throughout; its worst latency is over the calls it started during the "
        "attack. RSS is the server process's, sampled every 10 ms.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_average_1min']} (1 min), "
        f"Python {machine['python']}, grpcio {machine['grpcio']}, protobuf {machine['protobuf']}. "
        f"Server alive after every attack: {'yes' if result['server_alive_after'] else 'NO'}.",
        "",
        "| attack | what | RSS before -> peak (MB) | growth (MB) | good calls | good worst / p99 / median (ms) "
        "| good codes | attacker's codes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for window in result["attacks"]:
        growth = window["rss_peak_mb"] - window["rss_before_mb"]
        lines.append(
            f"| {window['attack']} | {window['note']} | {window['rss_before_mb']:.0f} -> {window['rss_peak_mb']:.0f} "
            f"| {growth:+.0f} | {window['good_calls']} | {window['good_worst_ms']:.1f} / {window['good_p99_ms']:.1f} / "
            f"{window['good_median_ms']:.1f} | {_codes(window['good_codes'])} | {_codes(window['attacker_codes'])} |"
        )
    path.write_text("\n".join(lines) + "\n")


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count:,}" for name, count in codes.items()) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="how long each stream attack runs (default 4)")
    parser.add_argument(
        "--only", metavar="TEXT", help="run only the attacks whose name contains TEXT (no results written)"
    )
    args = parser.parse_args()
    result = run(args.seconds, args.only)
    if args.only is not None:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "abuse.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "abuse.md")
    print((RESULTS / "abuse.md").read_text())


if __name__ == "__main__":
    main()
