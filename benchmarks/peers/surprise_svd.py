"""scikit-surprise's SVD: the seed's "SVD (Surprise)" row, a rating predictor used as a ranker."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from peers.base import ExplicitRatings, TrainingData, require_fitted


class SurpriseSvd:
    """``surprise.SVD`` (Funk-style biased MF by SGD) fitted on explicit star ratings.

    It predicts ``r̂ = μ + b_u + b_i + q_iᵀp_u``; the benchmark ranks every
    item by that predicted rating, as the seed did. Scores are computed for
    all items at once from the fitted parameters with the same formula as
    ``SVD.estimate`` (an item or user the trainset never saw contributes no
    bias and no factor), but *without* ``predict``'s clipping to the rating
    scale: clipping turns every prediction above 5 into a tie, which would
    make the ranking depend on item order instead of the model.
    The defaults are Surprise's own (100 factors, 20 epochs, lr 0.005, reg 0.02).
    """

    def __init__(
        self,
        factors: int = 100,
        epochs: int = 20,
        lr: float = 0.005,
        reg: float = 0.02,
        seed: int = 42,
    ) -> None:
        self.factors = factors
        self.epochs = epochs
        self.lr = lr
        self.reg = reg
        self.seed = seed
        self._user_vectors: npt.NDArray[np.float32] | None = None
        self._item_vectors: npt.NDArray[np.float32] | None = None

    def fit(self, data: TrainingData) -> None:
        import pandas as pd
        from surprise import SVD, Dataset, Reader

        ratings = _require_ratings(data)
        frame = pd.DataFrame({"user": ratings.rows, "item": ratings.cols, "rating": ratings.values})
        scale = (float(ratings.values.min()), float(ratings.values.max()))
        trainset = Dataset.load_from_df(frame, Reader(rating_scale=scale)).build_full_trainset()
        algo = SVD(
            n_factors=self.factors,
            n_epochs=self.epochs,
            lr_all=self.lr,
            reg_all=self.reg,
            random_state=self.seed,
        )
        algo.fit(trainset)

        user_bias = np.zeros(data.n_users, dtype=np.float64)
        user_factors = np.zeros((data.n_users, self.factors), dtype=np.float64)
        for inner in trainset.all_users():
            raw = int(trainset.to_raw_uid(inner))
            user_bias[raw] = algo.bu[inner]
            user_factors[raw] = algo.pu[inner]
        item_bias = np.zeros(data.n_items, dtype=np.float64)
        item_factors = np.zeros((data.n_items, self.factors), dtype=np.float64)
        for inner in trainset.all_items():
            raw = int(trainset.to_raw_iid(inner))
            item_bias[raw] = algo.bi[inner]
            item_factors[raw] = algo.qi[inner]
        # r̂ = [p_u, μ + b_u, 1] · [q_i, 1, b_i]: one matrix product scores a batch of users.
        ones_u = np.ones((data.n_users, 1))
        ones_i = np.ones((data.n_items, 1))
        mean = float(trainset.global_mean)
        self._user_vectors = np.hstack([user_factors, (mean + user_bias)[:, None], ones_u]).astype(np.float32)
        self._item_vectors = np.hstack([item_factors, ones_i, item_bias[:, None]]).astype(np.float32)

    def score(self, user_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        users = require_fitted(self._user_vectors)
        items = require_fitted(self._item_vectors)
        return users[user_rows] @ items.T


def _require_ratings(data: TrainingData) -> ExplicitRatings:
    if data.ratings is None or data.ratings.values.size == 0:
        raise ValueError("SurpriseSvd needs explicit ratings (TrainingData.ratings)")
    return data.ratings
