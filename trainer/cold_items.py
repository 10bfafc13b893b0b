"""The cold-items protocol (``recctl evaluate --cold-items``, ``benchmarks/cold_items.py``): movies held out of
training entirely, then ranked from their features for the users who liked them.

* Cold movies: ``cold_share`` of the movies with at least one positive (seed ``seed``), every rating of theirs
  removed before training (the ColdRec benchmark's item cold-start setting); half are validation cold movies
  (used only to pick the ridge regressor's strength), half test cold movies (reported).
* Warm training: the rest goes through the standard split (random 80/20 of positives, seed 42, 10 % of train
  for validation); GraphSAGE and LightGCN (the fast recipe) are trained on it as ``recctl train`` trains them,
  each within ``time_budget`` seconds.
* Cold vectors, from genres and year only: GraphSAGE's item tower (what ``recctl index add-items`` computes);
  LightGCN + ridge from the same features onto its trained item vectors (alpha from the validation cold
  movies). Baselines: *genre popularity* (a movie scores the mean training popularity of its genres, the same
  list for everyone) and *user genre affinity* (the mean share of the user's training positives in its genres).
* Users: every warm user with at least one positive among the test cold movies; targets: those positives.
* Rankings: *cold only*, the test cold movies among themselves (nothing masked); *among all*, among every
  warm movie too, each user's training positives masked, the targets still only the cold positives.
  Recall@K and NDCG@K as in :mod:`movierec.trainer.evaluate`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle import CSR, ItemMetadata
from movierec.errors import MovierecError
from movierec.item_features import ItemEncoder, fit_ridge
from movierec.trainer.config import resolve_config
from movierec.trainer.data import Dataset, Ratings, item_metadata, load_dataset, make_split
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


def cold_draw(dataset: Dataset, min_rating: float, share: float, seed: int) -> tuple[Ids, Ids]:
    """(validation cold ids, test cold ids): ``share`` of the movies with a positive, split in halves."""
    liked = np.unique(dataset.ratings.items[dataset.ratings.ratings >= min_rating])
    drawn = np.random.default_rng(seed).permutation(liked)[: round(share * liked.size)]
    half = drawn.size // 2
    return np.sort(drawn[:half]), np.sort(drawn[half:])


def without_items(dataset: Dataset, item_ids: npt.NDArray[np.int64]) -> Dataset:
    keep = ~np.isin(dataset.ratings.items, item_ids)
    r = dataset.ratings
    ratings = Ratings(r.users[keep], r.items[keep], r.ratings[keep], r.timestamps[keep])
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


def run_cold_items(
    data: Path, *, cold_share: float = 0.2, seed: int = 7, min_rating: float = 4.0, time_budget: float = 240.0
) -> dict[str, Any]:
    """Train both models on the warm movies and rank the test cold movies (module docstring); JSON-ready."""
    dataset = load_dataset(data)
    valid_ids, test_ids = cold_draw(dataset, min_rating, cold_share, seed)
    if test_ids.size < max(KS):
        raise MovierecError(
            f"only {test_ids.size} test cold movies: the protocol ranks them @{max(KS)}, so it needs a catalogue of "
            f"at least {round(2 * max(KS) / cold_share)} movies with a positive",
            path=data,
        )
    warm_data = without_items(dataset, np.concatenate([valid_ids, test_ids]))
    split = make_split(warm_data, min_rating=min_rating, seed=42)
    warm = item_metadata(dataset, split.item_ids)
    valid_items, test_items = item_metadata(dataset, valid_ids), item_metadata(dataset, test_ids)
    valid_cold = cold_positives(dataset, split, valid_ids, min_rating)
    test_cold = cold_positives(dataset, split, test_ids, min_rating)
    features = node_features(dataset, warm, split.user_ids)
    encoder = features.encoder
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    sage = train_sage(split, features, sage_config(time_budget=time_budget), progress=sys.stderr.isatty())
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
    lightgcn = train_model(split, resolve_config("fast", time_budget=time_budget), progress=sys.stderr.isatty())
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
            "positives": f"rating >= {min_rating:g}",
            "cold_share": cold_share,
            "cold_seed": seed,
            "validation_cold_movies": int(valid_ids.size),
            "test_cold_movies": int(test_ids.size),
            "warm_movies": split.n_items,
            "users_with_test_cold_positives": int((test_cold.row_lengths() > 0).sum()),
            "test_cold_positives": int(test_cold.indices.size),
            "warm_split": "random 80/20 of the warm positives, seed 42",
            "time_budget_s": time_budget,
        },
        "ridge_alpha_validation_recall@20": alpha_scores,
        "training_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "graphsage": {"best_epoch": sage.best_epoch, "stop": sage.stop_reason, "config": sage_config().to_json()},
        "lightgcn": {"best_epoch": lightgcn.best_epoch, "stop": lightgcn.stop_reason},
        "results": results,
    }
