"""What each peer is allowed to learn from, built from a dataset and its split without leaking held-out pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from movierec.bundle.csr import CSR
from movierec.trainer.data import Ratings
from peers.base import ExplicitRatings, TrainingData


def _pair_keys(rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], n_cols: int) -> npt.NDArray[np.int64]:
    return rows * n_cols + cols


def explicit_ratings_outside(
    ratings: Ratings,
    user_ids: npt.NDArray[np.int64],
    item_ids: npt.NDArray[np.int64],
    held_out: Sequence[CSR],
) -> ExplicitRatings:
    """Every star rating whose (user, item) pair is in none of ``held_out``, indexed by internal rows.

    ``user_ids``/``item_ids`` are the split's sorted id maps. The held-out
    parts are positives only, so what remains is the training positives *and*
    every rating below the positive threshold: a rating model learns what
    users dislike from those, and none of them is ever a test item.
    """
    rows = np.searchsorted(user_ids, ratings.users).astype(np.int64)
    cols = np.searchsorted(item_ids, ratings.items).astype(np.int64)
    if (
        np.any(rows >= user_ids.shape[0])
        or np.any(cols >= item_ids.shape[0])
        or np.any(user_ids[np.minimum(rows, user_ids.shape[0] - 1)] != ratings.users)
        or np.any(item_ids[np.minimum(cols, item_ids.shape[0] - 1)] != ratings.items)
    ):
        raise ValueError("ratings mention a user or item missing from the id maps")
    n_items = item_ids.shape[0]
    excluded = [np.empty(0, dtype=np.int64)]
    for part in held_out:
        part_rows, part_cols = part.to_pairs()
        excluded.append(_pair_keys(part_rows, part_cols.astype(np.int64), n_items))
    keep = ~np.isin(_pair_keys(rows, cols, n_items), np.concatenate(excluded))
    return ExplicitRatings(rows=rows[keep], cols=cols[keep], values=ratings.ratings[keep].astype(np.float32))


def training_data(
    ratings: Ratings,
    user_ids: npt.NDArray[np.int64],
    item_ids: npt.NDArray[np.int64],
    positives: CSR,
    held_out: Sequence[CSR],
) -> TrainingData:
    """``positives`` plus the explicit ratings outside ``held_out`` (see :func:`explicit_ratings_outside`)."""
    return TrainingData(
        positives=positives,
        ratings=explicit_ratings_outside(ratings, user_ids, item_ids, held_out),
    )
