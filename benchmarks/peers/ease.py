"""EASE (Steck, WWW 2019): a closed-form item-item linear model with a zero diagonal."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from movierec.bundle.csr import CSR
from peers.base import TrainingData, positives_matrix, require_fitted


class Ease:
    """``B = argmin ||X - XB||² + λ||B||²`` subject to ``diag(B) = 0``; a user's scores are ``x_u B``.

    The constrained problem has the closed form ``B = I - P diag(1/diag(P))``
    with ``P = (XᵀX + λI)⁻¹``, so fitting is one dense inversion of an
    items x items matrix (3706² on MovieLens-1M: about a second). EASE is the
    strongest simple baseline on this data, which is why the LightGCN target is
    set against it. :meth:`reading` gives the fitted ``B`` weighted user histories
    (the time-aware reference of ``benchmarks/generalise.py``).
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
        self._user_items = x

    def reading(self, positives: CSR, weights: npt.NDArray[np.float32]) -> Ease:
        """This fitted ``B`` scoring from histories whose entries carry ``weights`` (aligned with ``positives``).

        ``B`` does not depend on how a history is weighted, so one fit serves every weighting.
        """
        peer = Ease(self.l2)
        peer._weights = self.weights
        peer._user_items = sp.csr_matrix(
            (weights, positives.indices, positives.indptr), shape=(positives.n_rows, positives.n_cols)
        )
        return peer

    def score(self, user_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        weights = require_fitted(self._weights)
        user_items = require_fitted(self._user_items)
        return np.asarray(user_items[user_rows] @ weights, dtype=np.float32)

    @property
    def weights(self) -> npt.NDArray[np.float32]:
        """The fitted item-item matrix B (zero diagonal)."""
        return require_fitted(self._weights)
