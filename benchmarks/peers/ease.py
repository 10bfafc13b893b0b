"""EASE (Steck, WWW 2019): a closed-form item-item linear model with a zero diagonal."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from peers.base import TrainingData, positives_matrix, require_fitted


class Ease:
    """``B = argmin ||X - XB||² + λ||B||²`` subject to ``diag(B) = 0``; a user's scores are ``x_u B``.

    The constrained problem has the closed form ``B = I - P diag(1/diag(P))``
    with ``P = (XᵀX + λI)⁻¹``, so fitting is one dense inversion of an
    items x items matrix (3706² on MovieLens-1M: about a second). EASE is the
    strongest simple baseline on this data, which is why the LightGCN target is
    set against it. With ``TrainingData.weights`` a user's history row ``x_u``
    carries them (recency weights: the time-aware reference of
    ``benchmarks/generalise.py``); ``B`` is fitted on the plain positives either way.
    """

    def __init__(self, l2: float = 500.0) -> None:
        if l2 <= 0:
            raise ValueError("l2 must be positive")
        self.l2 = l2
        self._weights: npt.NDArray[np.float32] | None = None
        self._user_items: sp.csr_matrix | None = None

    def fit(self, data: TrainingData) -> None:
        x = positives_matrix(data.positives)
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)
        weights[np.diag_indices_from(weights)] = 0.0
        self._weights = weights.astype(np.float32)
        positives = data.positives
        self._user_items = (
            x
            if data.weights is None
            else sp.csr_matrix((data.weights, positives.indices, positives.indptr), shape=x.shape)
        )

    def score(self, user_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        weights = require_fitted(self._weights)
        user_items = require_fitted(self._user_items)
        return np.asarray(user_items[user_rows] @ weights, dtype=np.float32)

    @property
    def weights(self) -> npt.NDArray[np.float32]:
        """The fitted item-item matrix B (zero diagonal)."""
        return require_fitted(self._weights)
