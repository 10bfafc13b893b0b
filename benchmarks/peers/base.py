"""The interface every peer implements, and the training data it is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from movierec.bundle.csr import CSR


@dataclass(frozen=True)
class ExplicitRatings:
    """Star ratings a rating-prediction model may learn from, as (user row, item row, rating) triples.

    Only the explicit-feedback peer (Surprise SVD) reads these; the implicit
    peers see :attr:`TrainingData.positives` alone.
    """

    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if not self.rows.shape == self.cols.shape == self.values.shape:
            raise ValueError("rows, cols and values differ in length")


@dataclass(frozen=True)
class TrainingData:
    """What a peer may learn from: the training positives, plus explicit ratings for rating models.

    ``ratings`` must never contain a pair that is evaluated (valid pairs while
    tuning, test pairs for the final fit); the benchmark builds it that way.
    """

    positives: CSR
    ratings: ExplicitRatings | None = None

    @property
    def n_users(self) -> int:
        return self.positives.n_rows

    @property
    def n_items(self) -> int:
        return self.positives.n_cols


class Peer(Protocol):
    """A recommender that, once fitted, scores every item for a batch of user rows.

    Higher scores rank first; the evaluator masks training items itself, so a
    peer need not.
    """

    def fit(self, data: TrainingData) -> None: ...

    def score(self, user_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...


def positives_matrix(csr: CSR) -> sp.csr_matrix:
    """The positives as a float32 scipy CSR matrix of ones (users x items)."""
    data = np.ones(csr.nnz, dtype=np.float32)
    return sp.csr_matrix((data, csr.indices, csr.indptr), shape=(csr.n_rows, csr.n_cols))


class NotFittedError(RuntimeError):
    """``score`` was called before ``fit``."""


_State = TypeVar("_State")


def require_fitted(value: _State | None) -> _State:
    """The fitted state, or a clear error when ``fit`` has not run."""
    if value is None:
        raise NotFittedError("call fit() before score()")
    return value
