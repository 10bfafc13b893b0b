"""ML-1M load time: the seed's ``pd.read_csv(sep='::', engine='python')`` against ``load_dataset``.

Both run in the same process, interleaved (seed, ours, seed, ours, ...) so that
load from other processes on a shared machine hits both alike; the medians and
their ratio are written to ``benchmarks/results/load.md`` and ``load.json``
with the machine description.

The comparison is conservative: the seed call only parses ``ratings.dat``,
while ``load_dataset`` also validates every value (ids, rating range,
duplicate pairs), hashes the file (SHA-256) and parses ``movies.dat``. Before
timing, the script checks that both produce the same ratings.

Usage::

    .venv/bin/python benchmarks/load_bench.py [--data DIR] [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from bench_machine import machine_basics

from movierec.paths import default_ml1m_dir
from movierec.trainer.data import Dataset, load_dataset

RESULTS_NAME = "load"
SEED_CALL = "pd.read_csv('ratings.dat', sep='::', engine='python', names=[user, item, rating, timestamp])"


def seed_load(folder: Path) -> pd.DataFrame:
    """What the seed project did (its two-character separator forces the slow Python engine)."""
    return pd.read_csv(folder / "ratings.dat", sep="::", engine="python", names=["user", "item", "rating", "timestamp"])


def our_load(folder: Path) -> Dataset:
    return load_dataset(folder)


def same_ratings(folder: Path) -> None:
    seed, ours = seed_load(folder), our_load(folder).ratings
    for column, ours_column in (("user", ours.users), ("item", ours.items), ("timestamp", ours.timestamps)):
        if not np.array_equal(seed[column].to_numpy(), ours_column):
            raise SystemExit(f"the two loaders disagree on {column}")
    if not np.array_equal(seed["rating"].to_numpy(dtype=np.float32), ours.ratings):
        raise SystemExit("the two loaders disagree on rating")


def time_interleaved(loaders: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, load in loaders.items():
            start = time.perf_counter()
            load()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def machine() -> dict[str, Any]:
    return machine_basics("numpy", "pandas", "torch")


def write_results(out: Path, folder: Path, repeats: int, seconds: dict[str, list[float]]) -> dict[str, Any]:
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result: dict[str, Any] = {
        "benchmark": "ML-1M ratings load",
        "data": str(folder),
        "repeats": repeats,
        "seed_call": SEED_CALL,
        "our_call": "movierec.trainer.data.load_dataset(folder)  # + validation, SHA-256, movies.dat",
        "seconds": seconds,
        "median_seconds": medians,
        "speedup_median": medians["seed"] / medians["ours"],
        "machine": machine(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{RESULTS_NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# ML-1M load time",
        "",
        f"Data: `{folder}` (1,000,209 ratings). {repeats} runs each, interleaved, in one process; median.",
        "",
        "| loader | what it does | median (s) | runs (s) |",
        "|---|---|---:|---|",
        f"| seed | `{SEED_CALL}` | {medians['seed']:.3f} | {', '.join(f'{s:.3f}' for s in seconds['seed'])} |",
        f"| movierec | `load_dataset`: parse + validate ratings.dat, SHA-256, parse movies.dat "
        f"| {medians['ours']:.3f} | {', '.join(f'{s:.3f}' for s in seconds['ours'])} |",
        "",
        f"**Speed-up (median seed / median movierec): {result['speedup_median']:.1f}x** "
        "(both return the same user, item, rating and timestamp arrays; checked before timing).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared; 1-min load average {m['load_average_1min']}), "
        f"{m['platform']}; Python {m['python']}, numpy {m['numpy']}, pandas {m['pandas']}, torch {m['torch']}.",
        "",
        "How: `ratings.dat` is read as bytes, `::` is replaced by one control byte so the pandas C parser can",
        "split it, and every check (numeric fields, rating range, duplicate pairs) is one numpy expression",
        "over a whole column.",
        "",
    ]
    (out / f"{RESULTS_NAME}.md").write_text("\n".join(lines))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=default_ml1m_dir(), help="ML-1M folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("no --data and no MovieLens-1M at $MOVIEREC_DATA or ../shared/data/ml-1m")
    folder: Path = args.data
    same_ratings(folder)
    seconds = time_interleaved({"seed": lambda: seed_load(folder), "ours": lambda: our_load(folder)}, args.repeats)
    result = write_results(args.out, folder, args.repeats, seconds)
    print(f"seed {result['median_seconds']['seed']:.3f}s, movierec {result['median_seconds']['ours']:.3f}s, "
          f"speed-up {result['speedup_median']:.1f}x -> {args.out / RESULTS_NAME}.md")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
