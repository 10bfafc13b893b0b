"""Start-up replay of the interaction log, and the cost of one record call against the user's history.

A server replays every event its log still holds before it serves (the no-loss
rule keeps events until every retained version has them). This benchmark
writes ``--events`` (default 1,000,000) events for ``--users`` users over
``--items`` items (MovieLens-1M's 6,040 x 3,706 by default; users and items
drawn with a power law, a third of the events without a rating) into a fresh
log, then opens it, each way in its own process so the peak RSS is that
way's alone:

* ``batched``: :class:`InteractionLog` as it is (rows read 65,536 at a time into
  numpy columns, the latest event per (user, item) found with one lexsort, the
  per-user views sliced out of the sorted arrays);
* ``per_row``: the replay this replaced, kept here as the reference (one Python
  tuple per row, a dict per user, a Python sort per user);
* ``server``: what ``recctl serve`` opens for a SQLite file
  (:func:`movierec.server.event_stores.open_server_store`, which also follows
  other processes' writes), when that module is present.

Then the in-memory cost of folding one call (1 item) into a user who already
has ``h`` live items, h = 10 .. 10,000 (the per-user cap), the merge used now
against the old re-sort of the whole history, and one whole fsync'd ``record``
call at both ends of that range.

Usage::

    nice -n 10 .venv/bin/python benchmarks/replay_bench.py [--events 1000000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench_machine import machine_basics

from movierec.server.interaction_log import (
    DEFAULT_LIKE_THRESHOLD,
    DEFAULT_MAX_LIVE_ITEMS_PER_USER,
    LOG_FILE_NAME,
    InteractionLog,
)
from movierec.server.user_views import UserView, merged_view

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY_SIZES = (10, 100, 1_000, DEFAULT_MAX_LIVE_ITEMS_PER_USER)
WAYS = ("batched", "per_row", "server")
WAY_NAMES = {
    "batched": "`InteractionLog` (batched, numpy grouping)",
    "per_row": "per-row replay it replaced (reference)",
    "server": "`open_event_store(FILE)`: what `recctl serve` opens (`SharedFileLog`: that replay plus a follower)",
}


def write_log(path: Path, n_events: int, n_users: int, n_items: int, seed: int) -> float:
    """A log of ``n_events`` events in one transaction (the schema is InteractionLog's); returns seconds."""
    started = time.perf_counter()
    InteractionLog(path).close()
    rng = np.random.default_rng(seed)
    users = (rng.pareto(1.2, n_events) * n_users / 20).astype(np.int64) % n_users + 1
    items = (rng.pareto(1.0, n_events) * n_items / 20).astype(np.int64) % n_items + 1
    stars = rng.integers(1, 6, n_events).astype(np.float64)
    rated = rng.random(n_events) >= 1 / 3
    ratings = [float(r) if keep else None for r, keep in zip(stars.tolist(), rated.tolist(), strict=True)]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO interactions (user_id, item_id, rating, event_time, recorded_at) VALUES (?, ?, ?, 0, 0.0)",
            zip(users.tolist(), items.tolist(), ratings, strict=True),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a log at rest is: its WAL folded into the file
    finally:
        conn.close()
    return time.perf_counter() - started


def replay_per_row(path: Path) -> dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """The replay before this change, for comparison: a tuple per row, a dict per user, a sort per user."""
    conn = sqlite3.connect(path)
    try:
        per_user: dict[int, list[tuple[int, float | None]]] = {}
        for user_id, item_id, rating in conn.execute(
            "SELECT user_id, item_id, rating FROM interactions WHERE seq > 0 ORDER BY seq"
        ):
            per_user.setdefault(user_id, []).append((item_id, rating))
    finally:
        conn.close()
    views = {}
    for user_id, events in per_user.items():
        latest: dict[int, float] = {}
        for item_id, rating in events:
            latest[item_id] = math.nan if rating is None else rating
        views[user_id] = _resorted(latest)
    return views


def _resorted(latest: dict[int, float]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The old per-write view: the whole history out of a dict, sorted again."""
    items = np.fromiter(latest.keys(), dtype=np.int64, count=len(latest))
    values = np.fromiter(latest.values(), dtype=np.float64, count=len(latest))
    order = np.argsort(items)
    items, values = items[order], values[order]
    return items, items[np.isnan(values) | (values >= DEFAULT_LIKE_THRESHOLD)]


def _peak_rss_mib() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def measure(way: str, path: Path) -> dict[str, Any]:
    """Open the log ``way`` in this (fresh) process: seconds, and RSS before and at peak (MiB)."""
    before = _peak_rss_mib()
    started = time.perf_counter()
    users: int | None
    if way == "batched":
        log = InteractionLog(path)
        users = log.users
        log.close()
    elif way == "per_row":
        users = len(replay_per_row(path))
    else:
        from movierec.server.event_stores import open_event_store

        store = open_event_store(path)
        users = None  # the store does not say how many users it holds
        store.close()
    seconds = time.perf_counter() - started
    peak = _peak_rss_mib()
    return {
        "way": way,
        "seconds": round(seconds, 3),
        "rss_before_mib": round(before),
        "rss_peak_mib": round(peak),
        "users": users,
    }


def measure_in_child(way: str, path: Path) -> dict[str, Any] | None:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", way, "--log", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        print(f"{way}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})")
        return None
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def merge_costs(repeats: int) -> list[dict[str, Any]]:
    """Microseconds to fold one new item into a user holding ``h`` live items: merge now vs re-sort before."""
    rows = []
    rng = np.random.default_rng(1)
    for h in HISTORY_SIZES:
        seen = np.sort(rng.choice(10 * h, size=h, replace=False)).astype(np.int64)
        ratings = rng.integers(1, 6, h).astype(np.float64)
        view = UserView(seen, ratings, np.arange(1, h + 1, dtype=np.int64), seen)
        latest = dict(zip(seen.tolist(), ratings.tolist(), strict=True))
        item, rating, offset = np.array([5 * h + 1]), np.array([5.0]), np.array([h + 1])

        def merge(
            view: UserView = view,
            item: npt.NDArray[np.int64] = item,
            rating: npt.NDArray[np.float64] = rating,
            offset: npt.NDArray[np.int64] = offset,
        ) -> None:
            merged_view(view, item, rating, offset, DEFAULT_LIKE_THRESHOLD)

        def resort(latest: dict[int, float] = latest, item: int = int(item[0])) -> None:
            latest[item] = 5.0
            _resorted(latest)

        rows.append({"history": h, "merge_us": _best_us(merge, repeats), "resort_us": _best_us(resort, repeats)})
    return rows


def _best_us(action: Callable[[], None], repeats: int) -> float:
    """Microseconds per call, the best of 5 runs of ``repeats`` calls (the machine is shared: noise only adds)."""
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            action()
        best = min(best, (time.perf_counter() - started) / repeats)
    return round(best * 1e6, 1)


def record_costs(folder: Path, calls: int) -> list[dict[str, Any]]:
    """Median milliseconds per fsync'd one-item record call for a user with 10 vs ~10,000 live items, the calls
    of both users interleaved so that both meet the same disk (and the same WAL checkpoints)."""
    sizes = {1: 10, 2: DEFAULT_MAX_LIVE_ITEMS_PER_USER - calls}
    timings: dict[int, list[float]] = {user: [] for user in sizes}
    with InteractionLog(folder / "record.sqlite3") as log:
        for user, h in sizes.items():
            for start in range(0, h, 1000):
                log.record(user, list(range(start, min(h, start + 1000))))
        for n in range(calls):
            for user in sizes:
                started = time.perf_counter()
                log.record(user, [10_000_000 + n])
                timings[user].append(time.perf_counter() - started)
    return [{"history": h, "record_ms": round(statistics.median(timings[user]) * 1e3, 2)} for user, h in sizes.items()]


def write_results(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps(result, indent=2) + "\n")
    machine = result["machine"]
    lines = [
        "# Interaction log: start-up replay and record cost",
        "",
        f"`{result['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_average_1min']} (1 min),"
        f" Python {machine['python']}, numpy {machine['numpy']}.",
        "",
        f"Log: {result['events']:,} events, {result['users']:,} users, {result['items']:,} items"
        f" (power-law draws, a third without a rating), written in {result['write_seconds']:.1f} s.",
        "",
        "## Replay at start-up (each way in its own process)",
        "",
        "| way | seconds | RSS before (MiB) | peak RSS (MiB) | growth (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["replay"]:
        growth = row["rss_peak_mib"] - row["rss_before_mib"]
        name = WAY_NAMES[row["way"]]
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['rss_before_mib']} | {row['rss_peak_mib']} | {growth} |")
    ways = {row["way"]: row for row in result["replay"]}
    if "batched" in ways and "per_row" in ways:
        ratio = ways["per_row"]["seconds"] / ways["batched"]["seconds"]
        lines += ["", f"Batched replay: {ratio:.2f}x the speed of the per-row replay it replaced."]
    if "batched" in ways and "server" in ways:
        ratio = ways["server"]["seconds"] / ways["batched"]["seconds"]
        lines += [f"`recctl serve`'s store takes {ratio:.2f}x the seconds of `InteractionLog` alone."]
    lines += [
        "",
        "## Folding one call into a user's view (in memory, microseconds)",
        "",
        "| live items the user already has | merge (now) | re-sort of the history (before) |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {r['history']:,} | {r['merge_us']} | {r['resort_us']} |" for r in result["merge"]]
    lines += [
        "",
        "## One record call, fsync'd (milliseconds)",
        "",
        "| live items the user already has | ms per call |",
        "|---:|---:|",
    ]
    lines += [f"| {r['history']:,} | {r['record_ms']} |" for r in result["record"]]
    (out / "replay.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2000, help="merge timings per history size")
    parser.add_argument("--record-calls", type=int, default=50, help="fsync'd record calls per history size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--measure", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.log)))
        return 0
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as scratch:
        folder = Path(scratch)
        log_path = folder / LOG_FILE_NAME
        write_seconds = write_log(log_path, args.events, args.users, args.items, args.seed)
        print(f"wrote {args.events:,} events in {write_seconds:.1f} s")
        replay = [row for way in WAYS if (row := measure_in_child(way, log_path)) is not None]
        for row in replay:
            print(row)
        merge = merge_costs(args.repeats)
        record = record_costs(folder, args.record_calls)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--out")]
    result = {
        "command": " ".join(["nice -n 10 .venv/bin/python benchmarks/replay_bench.py", *shown]),
        "machine": machine_basics("numpy"),
        "events": args.events,
        "users": args.users,
        "items": args.items,
        "write_seconds": round(write_seconds, 2),
        "replay": replay,
        "merge": merge,
        "record": record,
    }
    write_results(result, args.out)
    print(json.dumps({"replay": replay, "merge": merge, "record": record}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
