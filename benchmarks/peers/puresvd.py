"""PureSVD (Cremonesi et al., RecSys 2010): the truncated SVD of the binary user-item matrix."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse.linalg as spla

from peers.base import TrainingData, positives_matrix, require_fitted


class PureSvd:
    """Scores ``x_u V Vᵀ`` with ``V`` the top-``factors`` right singular vectors of the train matrix.

    It is the best rank-``factors`` reconstruction of the training positives,
    i.e. the simplest dot-product model: user vector ``x_u V``, item vector
    the row of ``V``. LightGCN's output has the same form, so this row shows
    what plain low-rank factorisation reaches on the same split.
    """

    def __init__(self, factors: int = 32, seed: int = 42) -> None:
        if factors < 1:
            raise ValueError("factors must be at least 1")
        self.factors = factors
        self.seed = seed
        self._user_vectors: npt.NDArray[np.float32] | None = None
        self._item_vectors: npt.NDArray[np.float32] | None = None

    def fit(self, data: TrainingData) -> None:
        if self.factors >= min(data.n_users, data.n_items):
            raise ValueError(f"factors={self.factors} must be below min(users, items)")
        x = positives_matrix(data.positives).astype(np.float64)
        start = np.random.default_rng(self.seed).standard_normal(min(x.shape))
        _, _, vt = spla.svds(x, k=self.factors, v0=start)
        item_vectors = vt.T
        self._item_vectors = item_vectors.astype(np.float32)
        self._user_vectors = np.asarray(x @ item_vectors, dtype=np.float32)

    def score(self, user_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        users = require_fitted(self._user_vectors)
        items = require_fitted(self._item_vectors)
        return users[user_rows] @ items.T
