"""Popularity: every user gets the items with the most training positives."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from peers.base import TrainingData, require_fitted


class Popularity:
    """Scores an item by how many users have it among their training positives.

    The floor any personalised model must clear: it knows nothing about the user.
    """

    def __init__(self) -> None:
        self._counts: npt.NDArray[np.float32] | None = None

    def fit(self, data: TrainingData) -> None:
        positives = data.positives
        self._counts = np.bincount(positives.indices, minlength=positives.n_cols).astype(np.float32)

    def score(self, user_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        counts = require_fitted(self._counts)
        return np.broadcast_to(counts, (user_rows.shape[0], counts.shape[0])).copy()
