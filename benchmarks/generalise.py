"""Do the training defaults generalise? Ours, EASE, iALS and popularity on differently shaped data.

Every dataset of the suite is built from what is here — ML-1M and the
synthetic generator (``recctl data synth``) — and shaped like the data a user
may bring:

* ``ml1m-users10`` / ``ml1m-users30``: 10 % / 30 % of the users (all their ratings): fewer users, same items.
* ``ml1m-longtail``: shaped like the MovieLens "latest-small" release: 10 % of
  the users, and outside the 300 most-rated movies each rating is kept with
  probability 0.35, so most movies have only a few ratings.
* ``ml1m-rare-items``: only movies with at most 100 ratings, plus the 100 most-rated movies as a popular head.
* ``ml1m-temporal``: all of ML-1M with the temporal split (each user's latest positives are test).
* ``ml1m-min3``: all of ML-1M with ratings >= 3 as positives (more, noisier positives).
* ``synthetic``: ``recctl data synth`` output (power-law activity and popularity, latent tastes).
* ``synthetic-wide``: the generator at ml-latest-small's counts (610 users, 9,742 movies, 100,836
  ratings): few users and a wide catalogue of mostly rarely rated movies.

Per dataset: the same split for every model (positives rating >= 4 unless
noted, random 80/20 with seed 42, 10 % of train as validation); then

* **ours**: ``train_model`` with ``TrainConfig()`` — exactly ``recctl train``'s
  defaults — for each training seed;
* **EASE**: λ tuned on the validation slice (fit → valid Recall@20), refitted on train;
* **iALS** (``implicit``): factors / regularisation tuned on the validation slice, then one fit per seed;
* **popularity**;
* on a temporal split also **EASE + recency**: EASE whose user histories carry the recency weights
  ours may train with (strength and λ tuned together on the validation slice), so ours is also
  measured against a closed form that sees the timestamps.

Test: full ranking over all items, each user's train positives masked,
Recall@20 and NDCG@20 averaged over users with test items. Results:
``benchmarks/results/generalise.{md,json}``.

Usage::

    .venv/bin/python benchmarks/generalise.py [--quick] [--seeds 42,1] [--datasets ml1m-users10,synthetic]

``--quick`` runs smaller tuning grids and, unless ``--seeds`` is given, one
training seed; ``--merge`` keeps the datasets of the existing results that
this run does not repeat. ``--set NAME=VALUE`` (repeatable) is for sweeps
(``benchmarks/results/sweeps.md``): only ours is trained, with those
``TrainConfig`` fields changed, its validation and test scores are printed,
and the results files are left alone (they describe the defaults);
``--ensemble`` adds the score of the seeds' models averaged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from bench_machine import machine_basics
from peers.base import TrainingData
from peers.ease import Ease
from peers.ials import ImplicitAls
from peers.popularity import Popularity
from peers.tuning import grid_search

from movierec.paths import default_ml1m_dir
from movierec.trainer.data import Dataset, Ratings, load_dataset, make_split
from movierec.trainer.data.split import Split
from movierec.trainer.evaluate import evaluate_ranking, evaluate_vectors

RESULTS_NAME = "generalise"
METRICS = ("recall@20", "ndcg@20")
EASE_GRID = [{"l2": value} for value in (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)]
EASE_GRID_QUICK = [{"l2": value} for value in (100.0, 500.0, 2000.0)]
IALS_GRID = [{"factors": factors, "reg": reg, "alpha": 10.0} for factors in (64, 128) for reg in (10.0, 50.0, 100.0)]
IALS_GRID_QUICK = [{"factors": 64, "reg": reg, "alpha": 10.0} for reg in (10.0, 100.0)]
RECENCY_STRENGTHS = (2.0, 4.0, 6.0, 8.0)


@dataclass(frozen=True)
class Variant:
    """One dataset of the suite: how to build it from ML-1M (or the generator) and how to split it."""

    name: str
    description: str
    build: Callable[[Dataset], Dataset]
    min_rating: float = 4.0
    method: str = "random"


def _keep(dataset: Dataset, mask: np.ndarray, name: str) -> Dataset:
    r = dataset.ratings
    ratings = Ratings(users=r.users[mask], items=r.items[mask], ratings=r.ratings[mask], timestamps=r.timestamps[mask])
    return replace(dataset, name=name, ratings=ratings)


def user_fraction(fraction: float, name: str) -> Callable[[Dataset], Dataset]:
    def build(dataset: Dataset) -> Dataset:
        users = np.unique(dataset.ratings.users)
        chosen = np.random.default_rng(0).choice(users, size=max(1, round(fraction * users.size)), replace=False)
        return _keep(dataset, np.isin(dataset.ratings.users, chosen), name)

    return build


def _rating_counts(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(dataset.ratings.items, return_counts=True)


def long_tail(dataset: Dataset) -> Dataset:
    """10 % of users; outside the 300 most-rated movies each rating survives with probability 0.35."""
    few_users = user_fraction(0.1, "ml1m-longtail")(dataset)
    items, counts = _rating_counts(dataset)
    head = items[np.argsort(-counts, kind="stable")[:300]]
    in_head = np.isin(few_users.ratings.items, head)
    lucky = np.random.default_rng(1).random(len(few_users.ratings)) < 0.35
    return _keep(few_users, in_head | lucky, "ml1m-longtail")


def rare_items_and_head(dataset: Dataset) -> Dataset:
    """Movies with at most 100 ratings, plus the 100 most-rated movies."""
    items, counts = _rating_counts(dataset)
    head = items[np.argsort(-counts, kind="stable")[:100]]
    keep = np.concatenate([items[counts <= 100], head])
    return _keep(dataset, np.isin(dataset.ratings.items, keep), "ml1m-rare-items")


def renamed(name: str) -> Callable[[Dataset], Dataset]:
    return lambda dataset: replace(dataset, name=name)


def generated(name: str, users: int, items: int, ratings: int, seed: int) -> Callable[[Dataset], Dataset]:
    """A dataset of ``recctl data synth``'s generator (ML-1M is not used)."""

    def build(_: Dataset) -> Dataset:
        from movierec.trainer.data.synth import generate

        with tempfile.TemporaryDirectory(prefix="movierec-synth-") as folder:
            generate(folder, users=users, items=items, ratings=ratings, seed=seed, progress=False)
            return replace(load_dataset(folder), name=name)

    return build


VARIANTS = [
    Variant("ml1m-users10", "10 % of ML-1M's users", user_fraction(0.1, "ml1m-users10")),
    Variant("ml1m-users30", "30 % of ML-1M's users", user_fraction(0.3, "ml1m-users30")),
    Variant("ml1m-longtail", "10 % of users, tail ratings thinned to 35 % (latest-small shape)", long_tail),
    Variant("ml1m-rare-items", "movies with <= 100 ratings plus the 100 most-rated", rare_items_and_head),
    Variant("ml1m-temporal", "all of ML-1M, temporal split", renamed("ml1m-temporal"), method="temporal"),
    Variant("ml1m-min3", "all of ML-1M, ratings >= 3 are positives", renamed("ml1m-min3"), min_rating=3.0),
    Variant(
        "synthetic",
        "recctl data synth: 3,000 users, 2,000 movies, 150,000 ratings, seed 7",
        generated("synthetic", 3000, 2000, 150_000, 7),
    ),
    Variant(
        "synthetic-wide",
        "recctl data synth at ml-latest-small's counts: 610 users, 9,742 movies, 100,836 ratings, seed 11",
        generated("synthetic-wide", 610, 9742, 100_836, 11),
    ),
]


def describe(split: Split) -> dict[str, Any]:
    positives = split.train.nnz + split.test.nnz
    item_counts = np.bincount(split.train.indices, minlength=split.n_items)
    return {
        "users": split.n_users,
        "items": split.n_items,
        "positives": positives,
        "density": positives / max(1, split.n_users * split.n_items),
        "items_with_under_5_train_positives": float(np.mean(item_counts < 5)),
    }


def test_scores(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(float(metrics[name]), 4) for name in METRICS}


def parse_setting(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` for one ``TrainConfig`` field, the value converted to the type of the field's default."""
    from movierec.trainer.config import TrainConfig

    name, _, value = text.partition("=")
    defaults = TrainConfig().to_json()
    if not value or name not in defaults or name in ("search_space", "preset"):
        raise SystemExit(f"--set wants NAME=VALUE with NAME a TrainConfig field, got {text!r}")
    kind = type(defaults[name])
    if kind is bool:
        return name, value.lower() in ("1", "true", "yes")
    try:
        return name, kind(value)
    except ValueError:
        raise SystemExit(f"--set {name}: {value!r} is not a {kind.__name__}") from None


def run_ours(
    split: Split,
    seeds: Sequence[int],
    overrides: dict[str, Any] | None = None,
    vectors: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Ours for each seed; each run's served (user, item) vectors are appended to ``vectors`` when given."""
    from movierec.trainer.config import TrainConfig
    from movierec.trainer.train import train_model

    runs = []
    for seed in seeds:
        started = time.perf_counter()
        result = train_model(split, replace(TrainConfig(), **(overrides or {}), seed=seed), progress=False)
        if vectors is not None:
            vectors.append((result.user_vectors, result.item_vectors))
        metrics = evaluate_vectors(result.user_vectors, result.item_vectors, split.train, split.test)
        runs.append(
            {
                "seed": seed,
                "test": test_scores(metrics),
                "best_valid_recall": round(result.best_valid_recall, 4),
                "seconds": round(time.perf_counter() - started, 1),
                "epochs": [result.selection_epochs, result.refit_epochs],
                "temperature": result.config.temperature if result.config else None,
                "search": [vars(trial) for trial in result.search],
            }
        )
        print(f"    ours seed {seed}: {runs[-1]}", flush=True)
    return {"runs": runs}


def run_peer(
    make: Callable[..., Any], grid: Sequence[dict[str, Any]], split: Split, seeds: Sequence[int] | None
) -> dict[str, Any]:
    """Tune on valid when the grid has several points, then fit on train (once per seed) and test."""
    fit_data, train_data = TrainingData(split.fit), TrainingData(split.train)
    started = time.perf_counter()
    params = grid[0] if len(grid) == 1 else dict(grid_search(make, grid, fit_data, split.valid).best)
    runs = []
    chosen_seeds: Sequence[int | None] = seeds or [None]
    for seed in chosen_seeds:
        peer = make(**params, **({} if seed is None else {"seed": seed}))
        peer.fit(train_data)
        runs.append({"seed": seed, "test": test_scores(evaluate_ranking(peer.score, split.train, split.test))})
    return {"params": params, "runs": runs, "seconds": round(time.perf_counter() - started, 1)}


def run_recency_ease(grid: Sequence[dict[str, Any]], split: Split) -> dict[str, Any]:
    """EASE over recency-weighted histories: strength and λ chosen together on validation, then refitted on train.

    ``B`` does not depend on the weights, so each λ is fitted once and read with every strength's weights.
    """
    from movierec.trainer.recency import recency_weights

    started = time.perf_counter()
    fit_weights = {strength: recency_weights(split, split.fit, strength) for strength in RECENCY_STRENGTHS}
    best_per_strength: dict[float, tuple[float, dict[str, Any]]] = {}
    for params in grid:
        fitted = Ease(**params)
        fitted.fit(TrainingData(split.fit))
        for strength, weights in fit_weights.items():
            assert weights is not None  # the split has timestamps (a temporal one)
            peer = fitted.reading(split.fit, weights)
            recall = evaluate_ranking(peer.score, split.fit, split.valid)["recall@20"]
            if strength not in best_per_strength or recall > best_per_strength[strength][0]:
                best_per_strength[strength] = (recall, dict(params))
    strength = max(RECENCY_STRENGTHS, key=lambda s: best_per_strength[s][0])
    params = best_per_strength[strength][1]
    fitted = Ease(**params)
    fitted.fit(TrainingData(split.train))
    train_weights = recency_weights(split, split.train, strength)
    assert train_weights is not None
    peer = fitted.reading(split.train, train_weights)
    runs = [{"seed": None, "test": test_scores(evaluate_ranking(peer.score, split.train, split.test))}]
    return {"params": {**params, "recency": strength}, "runs": runs, "seconds": round(time.perf_counter() - started, 1)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "mean": round(float(np.mean([run["test"][name] for run in runs])), 4),
            "min": min(run["test"][name] for run in runs),
            "max": max(run["test"][name] for run in runs),
        }
        for name in METRICS
    }


def run_variant(variant: Variant, base: Dataset, seeds: Sequence[int], quick: bool) -> dict[str, Any]:
    dataset = variant.build(base)
    split = make_split(dataset, min_rating=variant.min_rating, method=variant.method)
    shape = describe(split)
    print(f"[generalise] {variant.name}: {shape}", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    rows["ours"] = run_ours(split, seeds)
    rows["EASE"] = run_peer(Ease, EASE_GRID_QUICK if quick else EASE_GRID, split, None)
    rows["iALS"] = run_peer(ImplicitAls, IALS_GRID_QUICK if quick else IALS_GRID, split, seeds)
    rows["popularity"] = run_peer(Popularity, [{}], split, None)
    if variant.method == "temporal":
        rows["EASE + recency"] = run_recency_ease(EASE_GRID_QUICK if quick else EASE_GRID, split)
    for name, row in rows.items():
        row["summary"] = summarise(row["runs"])
        print(f"  {name}: {row['summary']} {row.get('params', '')}", flush=True)
    return {
        "name": variant.name,
        "description": variant.description,
        "seeds": list(seeds),
        "grids": "quick" if quick else "full",
        "command": "python benchmarks/generalise.py " + " ".join(sys.argv[1:]),
        "split": {"method": variant.method, "positives": f"rating >= {variant.min_rating:g}", "seed": 42},
        "shape": shape,
        "rows": rows,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }


def _cuts(runs: list[dict[str, Any]]) -> str:
    """How many selection runs after each seed's first were cut for trailing (``TrainConfig.trial_cut``), if any."""
    later = [trial for run in runs for trial in run.get("search", [])[1:]]
    cut = sum(1 for trial in later if trial.get("cut"))
    return f"; {cut} of the {len(later)} later selection runs cut for trailing" if cut else ""


def _kept(run: dict[str, Any]) -> str:
    """The settings the small-data search kept in one run (the trial with the best validation recall)."""
    best = max(run["search"], key=lambda trial: trial["best_valid_recall"])
    return ", ".join(f"{name} {value}" for name, value in best["overrides"].items()) or "the defaults"


def compared(ours: float, rival: float) -> str:
    """ "ahead", "level" (the same to the 4 decimals the results carry) or "behind"."""
    if abs(ours - rival) < 5e-5:
        return "level"
    return "ahead" if ours > rival else "behind"


def standing(payload: dict[str, Any]) -> list[str]:
    """Where ours stands against EASE and iALS over the suite, counted per dataset and metric (means)."""
    lines = []
    for rival in ("EASE", "iALS"):
        ahead = 0
        not_ahead: dict[str, list[str]] = {"level": [], "behind": []}
        for result in payload["datasets"]:
            ours, other = result["rows"]["ours"]["summary"], result["rows"][rival]["summary"]
            states = {metric: compared(ours[metric]["mean"], other[metric]["mean"]) for metric in METRICS}
            ahead += all(state == "ahead" for state in states.values())
            for state, names in not_ahead.items():
                metrics = [metric for metric, got in states.items() if got == state]
                if metrics:
                    names.append(f"{result['name']} ({'/'.join(metrics)})")
        total = len(payload["datasets"])
        lines.append(
            f"- Against {rival}: ahead on both metrics on {ahead} of {total} datasets"
            + "".join(f"; {state} on {', '.join(names)}" for state, names in not_ahead.items() if names)
            + "."
        )
    return lines


def _cell(summary: dict[str, float]) -> str:
    if summary["min"] == summary["max"]:
        return f"{summary['mean']:.4f}"
    return f"{summary['mean']:.4f} ({summary['min']:.4f}-{summary['max']:.4f})"


def verdict(results: dict[str, Any]) -> str:
    ours, ease, ials = (results["rows"][name]["summary"] for name in ("ours", "EASE", "iALS"))
    parts = []
    for rival_name, rival in (("EASE", ease), ("iALS", ials)):
        deltas = [ours[metric]["mean"] - rival[metric]["mean"] for metric in METRICS]
        worst = [ours[metric]["min"] - rival[metric]["max"] for metric in METRICS]
        states = [compared(ours[m]["mean"], rival[m]["mean"]) for m in METRICS]
        status = (
            "ahead"
            if set(states) == {"ahead"}
            else "; ".join(
                f"{state} on " + "/".join(m for m, s in zip(METRICS, states, strict=True) if s == state)
                for state in ("level", "behind")
                if state in states
            )
        )
        parts.append(
            f"vs {rival_name} {deltas[0]:+.4f} / {deltas[1]:+.4f} ({status}; worst seed vs best {rival_name} "
            f"{worst[0]:+.4f} / {worst[1]:+.4f})"
        )
    return "; ".join(parts)


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    info = payload["machine"]
    lines = [
        "# Do the defaults generalise? Ours, EASE, iALS and popularity on differently shaped data",
        "",
        f"Written by `benchmarks/generalise.py` (last run {payload['finished_at']}; each dataset's own command "
        "is listed below it). "
        "Every dataset is built from ML-1M or the synthetic generator (see the script's docstring). "
        "Split: random 80/20 of the positives with seed 42 unless noted, 10 % of train as validation; "
        "test: full ranking over all items, each user's train positives masked, averaged over users with test "
        "items. *Ours* = `TrainConfig()`, what `recctl train` runs with no options (on data whose fit slice has at "
        "most `search_max_positives` positives that includes its search of temperature and depth on validation), "
        "one "
        "run per training seed; EASE's λ and iALS's factors/regularisation are tuned on the "
        "validation slice, then refitted on train (iALS once per seed). Cells: mean (min-max over seeds).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores shared with other work (1-minute load average "
        f"{payload['load_average_1min_at_start']} at the start), Python {info['python']}.",
        "",
        "| dataset | users | items | positives | density | ours R@20 | ours NDCG@20 | EASE R@20 | EASE NDCG@20 "
        "| iALS R@20 | iALS NDCG@20 | pop. R@20 | pop. NDCG@20 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in payload["datasets"]:
        shape, rows = result["shape"], result["rows"]
        cells = [
            _cell(rows[name]["summary"][metric])
            for name in ("ours", "EASE", "iALS", "popularity")
            for metric in METRICS
        ]
        lines.append(
            f"| {result['name']} | {shape['users']:,} | {shape['items']:,} | {shape['positives']:,} "
            f"| {shape['density']:.4f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "## Standing", "", *standing(payload)]
    lines += ["", "## Ours against the tuned peers (mean differences, Recall@20 / NDCG@20)", ""]
    for result in payload["datasets"]:
        rows = result["rows"]
        ours = rows["ours"]["runs"]
        lines.append(
            f"- **{result['name']}** ({result['description']}; {result['split']['positives']}, "
            f"{result['split']['method']} split; seeds {result['seeds']}, {result['grids']} grids, "
            f"`{result['command']}`): {verdict(result)}. EASE λ {rows['EASE']['params']['l2']:g}; "
            f"iALS {rows['iALS']['params']}; ours' epochs (selection, refit) {[run['epochs'] for run in ours]}, "
            f"seconds {[run['seconds'] for run in ours]}"
            + (f"; the search kept {[_kept(run) for run in ours]}" if ours[0].get("search") else "")
            + _cuts(ours)
            + "."
        )
        if "EASE + recency" in rows:
            timed = rows["EASE + recency"]
            deltas = [rows["ours"]["summary"][m]["mean"] - timed["summary"][m]["mean"] for m in METRICS]
            lines.append(
                f"  EASE over recency-weighted histories (λ {timed['params']['l2']:g}, strength "
                f"{timed['params']['recency']:g}, tuned together on validation): "
                + " / ".join(f"{timed['summary'][m]['mean']:.4f}" for m in METRICS)
                + f"; ours {deltas[0]:+.4f} / {deltas[1]:+.4f}."
            )
    lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=default_ml1m_dir(), help="the ML-1M folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seeds", help="training seeds for ours and iALS (default: 42,1,2; 42 with --quick)")
    parser.add_argument("--datasets", default=",".join(v.name for v in VARIANTS), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="smaller tuning grids and, unless --seeds, one seed")
    parser.add_argument("--merge", action="store_true", help="keep the other datasets of the existing results")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a sweep: train only ours with this TrainConfig field changed (repeatable); writes no results",
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="with --set: also score the seeds' models averaged (mean score)"
    )
    parser.add_argument("--render", action="store_true", help="rewrite generalise.md from generalise.json only")
    args = parser.parse_args()
    if args.render:
        write_markdown(json.loads((args.out / f"{RESULTS_NAME}.json").read_text()), args.out / f"{RESULTS_NAME}.md")
        return 0
    if args.data is None:
        raise SystemExit("no --data and no MovieLens-1M copy found")
    names = [name for name in args.datasets.split(",") if name]
    unknown = sorted(set(names) - {v.name for v in VARIANTS})
    if unknown:
        raise SystemExit(f"unknown dataset(s) {', '.join(unknown)}")
    seeds = [int(seed) for seed in (args.seeds or ("42" if args.quick else "42,1,2")).split(",")]
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started, load_at_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    base = load_dataset(args.data)
    if args.set:
        overrides = dict(parse_setting(text) for text in args.set)
        for variant in (v for v in VARIANTS if v.name in names):
            split = make_split(variant.build(base), min_rating=variant.min_rating, method=variant.method)
            print(f"[generalise] {variant.name} with {overrides}: {describe(split)}", flush=True)
            members: list[tuple[np.ndarray, np.ndarray]] = []
            run_ours(split, seeds, overrides, members if args.ensemble else None)
            if args.ensemble:
                # Vectors side by side, scaled by 1/sqrt(n): the score is the members' mean score (mean cosine).
                scale = 1.0 / np.sqrt(len(members))
                users, items = (np.hstack([member[part] for member in members]) * scale for part in (0, 1))
                metrics = evaluate_vectors(users, items, split.train, split.test)
                print(f"    ensemble of seeds {list(seeds)}: {test_scores(metrics)}", flush=True)
        return 0
    previous = args.out / f"{RESULTS_NAME}.json"
    kept = json.loads(previous.read_text())["datasets"] if args.merge and previous.is_file() else []
    order = [v.name for v in VARIANTS]
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in (v for v in VARIANTS if v.name in names):
        # Written after every dataset, so an interrupted run keeps what it finished.
        fresh = run_variant(variant, base, seeds, args.quick)
        kept = sorted([r for r in kept if r["name"] != fresh["name"]] + [fresh], key=lambda r: order.index(r["name"]))
        payload = {
            "command": "python benchmarks/generalise.py " + " ".join(sys.argv[1:]),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": time.perf_counter() - started,
            "seeds": seeds,
            "quick": args.quick,
            "machine": machine_basics("torch", "numpy", "implicit"),
            "load_average_1min_at_start": load_at_start,
            "datasets": kept,
        }
        previous.write_text(json.dumps(payload, indent=2) + "\n")
        write_markdown(payload, args.out / f"{RESULTS_NAME}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
