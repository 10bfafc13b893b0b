"""Cold items: how well movies nobody rated during training are ranked for the users who later liked them.

Protocol (written into the results with every number):

* Data: ML-1M by default (``--data``); positives = rating >= 4.
* Cold movies: 20 % of the movies with at least one positive (``--cold-share``, seed ``--seed``), every rating
  of theirs removed before training (the ColdRec benchmark's item cold-start setting); half are validation
  cold movies (used only to pick the ridge regressor's strength), half test cold movies (reported).
* Warm training: the rest goes through the standard split (random 80/20 of positives, seed 42, 10 % of train
  for validation) and each model is trained on it exactly as ``recctl train`` trains it (``--time-budget``
  seconds each): GraphSAGE (``--model graphsage``) and LightGCN (the fast recipe).
* Vectors for the cold movies, from genres and year only: GraphSAGE's item tower (the model's forward pass
  without neighbours, as ``recctl index add-items`` computes it); LightGCN + ridge regression from the same
  features onto its trained item vectors (``movierec.item_features.fit_ridge``, alpha from the validation
  cold movies). Baselines: *genre popularity* (a movie scores the mean training popularity of its genres, the
  same list for everyone) and *user genre affinity* (the mean share of the user's training positives in the
  movie's genres).
* Users: every warm user with at least one positive among the test cold movies; targets: those positives.
* Rankings: (a) *cold only*: the test cold movies ranked among themselves (nothing masked); (b) *among all*:
  the test cold movies ranked among every warm movie as well, each user's training positives masked, the
  targets still only the cold positives. Recall@K and NDCG@K as in ``movierec.trainer.evaluate``.

Usage::

    nice -n 10 .venv/bin/python benchmarks/cold_items.py [--data DIR] [--time-budget 240] [--out benchmarks/results]

Results: ``benchmarks/results/cold_items.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP waits steal shared cores

import numpy as np
import numpy.typing as npt
from bench_machine import machine_basics

from movierec.bundle import CSR, ItemMetadata
from movierec.item_features import ItemEncoder, fit_ridge
from movierec.paths import default_ml1m_dir
from movierec.trainer.config import resolve_config
from movierec.trainer.data import Dataset, item_metadata, load_dataset, make_split
from movierec.trainer.data.split import Split
from movierec.trainer.evaluate import evaluate_vectors
from movierec.trainer.features import node_features
from movierec.trainer.sage_config import sage_config
from movierec.trainer.sage_train import train_sage
from movierec.trainer.train import train_model

RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
KS = (10, 20)
Vectors = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="ratings folder (default: MovieLens-1M)")
    parser.add_argument("--cold-share", type=float, default=0.2, help="share of movies held out (0.2)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the cold movie draw")
    parser.add_argument("--min-rating", type=float, default=4.0)
    parser.add_argument("--time-budget", type=float, default=240.0, help="training seconds per model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args(argv)


def cold_draw(dataset: Dataset, min_rating: float, share: float, seed: int) -> tuple[Ids, Ids]:
    """(validation cold ids, test cold ids): ``share`` of the movies with a positive, split in halves."""
    liked = np.unique(dataset.ratings.items[dataset.ratings.ratings >= min_rating])
    drawn = np.random.default_rng(seed).permutation(liked)[: round(share * liked.size)]
    half = drawn.size // 2
    return np.sort(drawn[:half]), np.sort(drawn[half:])


def without_items(dataset: Dataset, item_ids: npt.NDArray[np.int64]) -> Dataset:
    keep = ~np.isin(dataset.ratings.items, item_ids)
    r = dataset.ratings
    ratings = type(r)(r.users[keep], r.items[keep], r.ratings[keep], r.timestamps[keep])
    return replace(dataset, ratings=ratings)


def cold_positives(dataset: Dataset, split: Split, cold_ids: npt.NDArray[np.int64], min_rating: float) -> CSR:
    """Users (split rows) x cold movies (positions in ``cold_ids``): the positives of warm users."""
    r = dataset.ratings
    mask = np.isin(r.items, cold_ids) & (r.ratings >= min_rating) & np.isin(r.users, split.user_ids)
    rows = np.searchsorted(split.user_ids, r.users[mask])
    cols = np.searchsorted(cold_ids, r.items[mask])
    return CSR.from_pairs(rows.tolist(), cols.tolist(), split.n_users, cold_ids.size)


def genre_baselines(split: Split, warm: ItemMetadata, encoder: ItemEncoder) -> tuple[Vectors, Vectors, Vectors]:
    """(user genre shares, everyone's genre popularity, item genre weights): score = user row · item row."""
    genres = encoder.encode(warm.genres, warm.years)[:, : len(encoder.genres)]
    users, items = split.train.to_pairs()
    counts = np.zeros((split.n_users, len(encoder.genres)), dtype=np.float32)
    np.add.at(counts, users, genres[items])
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    popularity = counts.sum(axis=0, keepdims=True) / max(counts.sum(), 1)
    return shares, np.repeat(popularity, split.n_users, axis=0), genres


def item_genre_rows(encoder: ItemEncoder, items: ItemMetadata) -> Vectors:
    """Genre multi-hot divided by the genre count: a dot product is then the mean over the movie's genres."""
    hot = encoder.encode(items.genres, items.years)[:, : len(encoder.genres)]
    rows: Vectors = (hot / np.maximum(hot.sum(axis=1, keepdims=True), 1)).astype(np.float32)
    return rows


def rankings(
    users: Vectors, warm_items: Vectors, cold_items: Vectors, split: Split, cold: CSR
) -> dict[str, dict[str, float]]:
    """Metrics of the cold-only and among-all rankings (module docstring)."""
    nothing = CSR.from_pairs([], [], split.n_users, cold.n_cols)
    cold_only = evaluate_vectors(users, cold_items, nothing, cold, ks=KS)
    n_warm = warm_items.shape[0]
    shifted = CSR(cold.indptr, (cold.indices + n_warm).astype(np.int32), n_cols=n_warm + cold.n_cols)
    masked = CSR(split.train.indptr, split.train.indices, n_cols=n_warm + cold.n_cols)
    among_all = evaluate_vectors(users, np.concatenate([warm_items, cold_items]), masked, shifted, ks=KS)
    return {"cold_only": cold_only, "among_all": among_all}


def best_ridge(
    encoder: ItemEncoder, warm: ItemMetadata, warm_vectors: Vectors, trained: npt.NDArray[np.int64],
    users: Vectors, valid_items: ItemMetadata, valid: CSR, split: Split,
) -> tuple[float, dict[str, float]]:  # fmt: skip
    """The ridge alpha with the best cold-only Recall@20 on the validation cold movies."""
    nothing = CSR.from_pairs([], [], split.n_users, valid.n_cols)
    genres = [warm.genres[r] for r in trained.tolist()]
    years = [warm.years[r] for r in trained.tolist()]
    scores = {}
    for alpha in RIDGE_ALPHAS:
        ridge = fit_ridge(encoder, genres, years, warm_vectors[trained], alpha)
        vectors = ridge.vectors(valid_items.genres, valid_items.years)
        scores[str(alpha)] = evaluate_vectors(users, vectors, nothing, valid, ks=(20,))["recall@20"]
    return float(max(scores, key=lambda a: scores[a])), scores


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = args.data or default_ml1m_dir()
    if data is None:
        raise SystemExit("no --data and no MovieLens-1M found ($MOVIEREC_DATA)")
    dataset = load_dataset(data)
    valid_ids, test_ids = cold_draw(dataset, args.min_rating, args.cold_share, args.seed)
    warm_data = without_items(dataset, np.concatenate([valid_ids, test_ids]))
    split = make_split(warm_data, min_rating=args.min_rating, seed=42)
    warm = item_metadata(dataset, split.item_ids)
    valid_items, test_items = item_metadata(dataset, valid_ids), item_metadata(dataset, test_ids)
    valid_cold = cold_positives(dataset, split, valid_ids, args.min_rating)
    test_cold = cold_positives(dataset, split, test_ids, args.min_rating)
    features = node_features(dataset, warm, split.user_ids)
    encoder = features.encoder
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    sage = train_sage(split, features, sage_config(time_budget=args.time_budget), progress=sys.stderr.isatty())
    seconds["graphsage"] = time.perf_counter() - started
    tower = sage.model.item_tower()
    results["GraphSAGE (item tower)"] = rankings(
        sage.user_vectors, sage.item_vectors, tower(encoder.encode(test_items.genres, test_items.years)), split,
        test_cold,
    )  # fmt: skip
    results["GraphSAGE (item tower)"]["warm_test"] = evaluate_vectors(
        sage.user_vectors, sage.item_vectors, split.train, split.test, ks=KS
    )

    started = time.perf_counter()
    lightgcn = train_model(split, resolve_config("fast", time_budget=args.time_budget), progress=sys.stderr.isatty())
    seconds["lightgcn"] = time.perf_counter() - started
    trained = np.flatnonzero(np.bincount(split.train.indices, minlength=split.n_items) > 0)
    alpha, alpha_scores = best_ridge(
        encoder, warm, lightgcn.item_vectors, trained, lightgcn.user_vectors, valid_items, valid_cold, split
    )
    genres = [warm.genres[r] for r in trained.tolist()]
    years = [warm.years[r] for r in trained.tolist()]
    ridge = fit_ridge(encoder, genres, years, lightgcn.item_vectors[trained], alpha)
    key = f"LightGCN + ridge (alpha {alpha:g})"
    results[key] = rankings(
        lightgcn.user_vectors, lightgcn.item_vectors, ridge.vectors(test_items.genres, test_items.years), split,
        test_cold,
    )  # fmt: skip
    results[key]["warm_test"] = evaluate_vectors(
        lightgcn.user_vectors, lightgcn.item_vectors, split.train, split.test, ks=KS
    )

    shares, popularity, warm_genres = genre_baselines(split, warm, encoder)
    warm_rows = warm_genres / np.maximum(warm_genres.sum(axis=1, keepdims=True), 1)
    cold_rows = item_genre_rows(encoder, test_items)
    results["genre popularity"] = rankings(popularity, warm_rows, cold_rows, split, test_cold)
    results["user genre affinity"] = rankings(shares, warm_rows, cold_rows, split, test_cold)
    return {
        "protocol": {
            "data": str(data),
            "positives": f"rating >= {args.min_rating:g}",
            "cold_share": args.cold_share,
            "cold_seed": args.seed,
            "validation_cold_movies": int(valid_ids.size),
            "test_cold_movies": int(test_ids.size),
            "warm_movies": split.n_items,
            "users_with_test_cold_positives": int((test_cold.row_lengths() > 0).sum()),
            "test_cold_positives": int(test_cold.indices.size),
            "warm_split": "random 80/20 of the warm positives, seed 42",
            "time_budget_s": args.time_budget,
        },
        "ridge_alpha_validation_recall@20": alpha_scores,
        "training_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "graphsage": {"best_epoch": sage.best_epoch, "stop": sage.stop_reason, "config": sage_config().to_json()},
        "lightgcn": {"best_epoch": lightgcn.best_epoch, "stop": lightgcn.stop_reason},
        "results": results,
        "machine": machine_basics("torch", "torch-geometric", "numpy"),
    }


def markdown(result: dict[str, Any]) -> str:
    p = result["protocol"]
    lines = [
        "# Cold items: ranking movies nobody rated during training",
        "",
        "Produced by `nice -n 10 .venv/bin/python benchmarks/cold_items.py"
        f" --time-budget {p['time_budget_s']:g}` (protocol: the script's docstring).",
        "",
        f"- Data: `{p['data']}`, positives {p['positives']}; {p['validation_cold_movies']} validation + "
        f"{p['test_cold_movies']} test cold movies ({p['cold_share']:.0%} of the movies with a positive, seed "
        f"{p['cold_seed']}), all their ratings removed before training; {p['warm_movies']} warm movies, "
        f"{p['warm_split']}.",
        f"- Evaluated: {p['users_with_test_cold_positives']} users with {p['test_cold_positives']} positives "
        "among the test cold movies. *Cold only*: the test cold movies ranked among themselves. *Among all*: "
        "ranked among every warm movie too (training positives masked), targets still only the cold positives.",
        f"- Training: at most {p['time_budget_s']:g} s per model; took {result['training_seconds']}.",
        f"- Ridge alpha picked on the validation cold movies (Recall@20): {result['ridge_alpha_validation_recall@20']}",
        "",
        "| method | cold only R@20 | cold only N@20 | cold only R@10 | among all R@20 | among all N@20 "
        "| warm test R@20 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        c, a = r["cold_only"], r["among_all"]
        warm = f"{r['warm_test']['recall@20']:.4f}" if "warm_test" in r else "-"
        lines.append(
            f"| {name} | {c['recall@20']:.4f} | {c['ndcg@20']:.4f} | {c['recall@10']:.4f} | "
            f"{a['recall@20']:.4f} | {a['ndcg@20']:.4f} | {warm} |"
        )
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load {m['load_average_1min']} (shared); torch {m['torch']}, "
        f"torch_geometric {m['torch_geometric']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_items.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "cold_items.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
