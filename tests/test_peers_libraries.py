"""The library-backed peers (the optional ``peers`` extra): skipped when their library is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from movierec.trainer.evaluate import evaluate_ranking

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from peers.base import ExplicitRatings, TrainingData
from test_peers import planted_blocks


def test_implicit_als_recovers_planted_blocks() -> None:
    pytest.importorskip("implicit")
    from peers.ials import ImplicitAls

    train, test = planted_blocks()
    peer = ImplicitAls(factors=8, reg=0.1, alpha=10.0, iterations=15)
    peer.fit(TrainingData(train))
    assert evaluate_ranking(peer.score, train, test, ks=(1,))["recall@1"] == pytest.approx(1.0)


def _ratings(seed: int = 0) -> ExplicitRatings:
    """Random star ratings of 30 users x 12 items; item 11 is never rated (unknown to the model)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(rng.random((30, 11)) < 0.6)
    values = rng.integers(1, 6, rows.shape[0]).astype(np.float32)
    return ExplicitRatings(rows=rows.astype(np.int64), cols=cols.astype(np.int64), values=values)


def test_surprise_svd_scores_are_its_unclipped_predictions() -> None:
    """Scores computed for all items at once equal Surprise's own ``predict(..., clip=False)``."""
    pytest.importorskip("surprise")
    import pandas as pd
    from peers.surprise_svd import SurpriseSvd
    from surprise import SVD, Dataset, Reader

    from movierec.bundle.csr import CSR

    ratings = _ratings()
    positives = CSR.from_pairs(ratings.rows, ratings.cols, 30, 12)
    peer = SurpriseSvd(factors=4, epochs=5, seed=3)
    peer.fit(TrainingData(positives, ratings))

    frame = pd.DataFrame({"user": ratings.rows, "item": ratings.cols, "rating": ratings.values})
    reference = SVD(n_factors=4, n_epochs=5, random_state=3)
    reference.fit(Dataset.load_from_df(frame, Reader(rating_scale=(1, 5))).build_full_trainset())
    users = np.array([0, 7, 29], dtype=np.int64)
    scores = peer.score(users)
    assert scores.shape == (3, 12)
    for row, user in enumerate(users):
        expected = [reference.predict(int(user), item, clip=False).est for item in range(12)]
        np.testing.assert_allclose(scores[row], expected, rtol=1e-5)


def test_surprise_svd_needs_explicit_ratings() -> None:
    pytest.importorskip("surprise")
    from peers.surprise_svd import SurpriseSvd

    train, _ = planted_blocks()
    with pytest.raises(ValueError, match="explicit ratings"):
        SurpriseSvd().fit(TrainingData(train))


@pytest.mark.slow
def test_spark_als_recovers_planted_blocks() -> None:
    pytest.importorskip("pyspark")
    from peers.spark_als import SparkAls, local_spark

    train, test = planted_blocks()
    with local_spark(cores=1) as spark:
        peer = SparkAls(spark, rank=8, reg=0.01, alpha=10.0, iterations=10, blocks=1)
        peer.fit(TrainingData(train))
    # Popularity gets below 0.5 here (test_peers); Spark's count-scaled regularisation blurs a few users.
    assert evaluate_ranking(peer.score, train, test, ks=(1,))["recall@1"] >= 0.9
