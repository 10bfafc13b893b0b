"""The evaluation split (design notes §4): who trains on what, and what is held out.

Standard (``method="random"``): positives are ratings ``>= min_rating``; ONE
global random ``1 - test_fraction`` / ``test_fraction`` split of the positive
(user, item) pairs drawn with ``numpy.random.default_rng(seed)``; the
validation slice is a random ``valid_fraction`` of the train pairs (so it is
never taken from test). The pairs are put in canonical (user, item) order
before shuffling, so the split depends on the seed and the data, not on the
order of the lines in the file.

Temporal (``method="temporal"``): per user, the latest ``test_fraction`` of
that user's positives (by timestamp; at equal times the higher item id counts
as later) are test, and the latest ``valid_fraction`` of the rest are
validation.

Counts are rounded to the nearest whole number, halves up, in both methods; so
in the temporal split a user with very few positives may have none held out.

``seen`` is every item a user rated at all (whatever the rating): serving
never recommends those. ``train_times`` (when the table has a time column) is
the timestamp of each train positive, aligned with ``train.indices``: training
may weight recent positives more (``movierec.trainer.recency``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle import CSR
from movierec.errors import DataError
from movierec.trainer.data.types import Dataset

METHODS = ("random", "temporal")


@dataclass(frozen=True)
class Split:
    """Id maps plus the per-user item sets of each part (rows = users, columns = items)."""

    user_ids: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]
    seen: CSR
    train: CSR
    fit: CSR
    valid: CSR
    test: CSR
    protocol: dict[str, Any]
    # Timestamp of each train positive, aligned with train.indices (a user's repeated rating of an item: its
    # latest); None when the table has no time column.
    train_times: npt.NDArray[np.int64] | None = None

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])


def make_split(
    ds: Dataset,
    *,
    min_rating: float = 4.0,
    seed: int = 42,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    method: str = "random",
) -> Split:
    """Split ``ds`` into fit / valid / test positives; see the module docstring for the protocol."""
    _check_arguments(ds, test_fraction, valid_fraction, method)
    r = ds.ratings
    user_ids, user_rows = np.unique(r.users, return_inverse=True)
    item_ids, item_rows = np.unique(r.items, return_inverse=True)
    n_users, n_items = len(user_ids), len(item_ids)
    positive = r.ratings >= min_rating
    order = np.lexsort((item_rows[positive], user_rows[positive]))
    users = user_rows[positive][order].astype(np.int64)
    items = item_rows[positive][order].astype(np.int64)
    if users.size < 2:
        raise DataError(
            f"only {users.size} positive rating(s) >= {min_rating:g}: too few to split (lower --min-rating?)",
            path=ds.ratings_file or ds.path,
        )
    times = r.timestamps[positive][order].astype(np.int64)
    if method == "random":
        is_test, is_valid = _random_masks(users.size, seed, test_fraction, valid_fraction)
    else:
        is_test, is_valid = _temporal_masks(users, items, times, test_fraction, valid_fraction)
    is_train = ~is_test
    is_fit = is_train & ~is_valid
    if not is_test.any() or not is_fit.any():
        raise DataError(
            f"{users.size} positive ratings >= {min_rating:g} leave an empty "
            f"{'test' if not is_test.any() else 'training'} set with test_fraction={test_fraction:g}, "
            f"valid_fraction={valid_fraction:g}",
            path=ds.ratings_file or ds.path,
        )

    def part(mask: npt.NDArray[np.bool_]) -> CSR:
        return CSR.from_pairs(users[mask], items[mask], n_users, n_items)

    return Split(
        user_ids=user_ids.astype(np.int64),
        item_ids=item_ids.astype(np.int64),
        seen=CSR.from_pairs(user_rows, item_rows, n_users, n_items),
        train=part(is_train),
        fit=part(is_fit),
        valid=part(is_valid),
        test=part(is_test),
        train_times=_latest_per_pair(users[is_train], items[is_train], times[is_train], n_items)
        if ds.has_timestamps
        else None,
        protocol={
            "split": method,
            "seed": seed,
            "test_fraction": test_fraction,
            "valid_fraction": valid_fraction,
            "min_rating": min_rating,
            "dataset": ds.name,
            "dataset_sha256": ds.checksum,
        },
    )


def _check_arguments(ds: Dataset, test_fraction: float, valid_fraction: float, method: str) -> None:
    if method not in METHODS:
        raise DataError(f"unknown split method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if not 0.0 <= valid_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {valid_fraction}")
    if method == "temporal" and not ds.has_timestamps:
        raise DataError("a temporal split needs timestamps; this table has no time column", path=ds.path)


def _random_masks(
    n: int, seed: int, test_fraction: float, valid_fraction: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    rng = np.random.default_rng(seed)
    n_test = int(_rounded(np.array([test_fraction * n]))[0])
    shuffled = rng.permutation(n)
    is_test = np.zeros(n, dtype=bool)
    is_test[shuffled[:n_test]] = True
    train_positions = shuffled[n_test:]
    n_valid = int(_rounded(np.array([valid_fraction * train_positions.size]))[0])
    is_valid = np.zeros(n, dtype=bool)
    is_valid[rng.permutation(train_positions)[:n_valid]] = True
    return is_test, is_valid


def _temporal_masks(
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    test_fraction: float,
    valid_fraction: float,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Rank each user's positives by (timestamp, item) and hold out the latest ones."""
    order = np.lexsort((items, times, users))
    sorted_users = users[order]
    counts = np.bincount(sorted_users)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank_from_end = np.repeat(starts + counts, counts) - np.arange(users.size) - 1  # 0 = the latest
    n_test = _rounded(test_fraction * counts)
    n_valid = _rounded(valid_fraction * (counts - n_test))
    per_row_test = np.repeat(n_test, counts)
    per_row_valid = np.repeat(n_valid, counts)
    is_test = np.empty(users.size, dtype=bool)
    is_valid = np.empty(users.size, dtype=bool)
    is_test[order] = rank_from_end < per_row_test
    is_valid[order] = (rank_from_end >= per_row_test) & (rank_from_end < per_row_test + per_row_valid)
    return is_test, is_valid


def _latest_per_pair(
    users: npt.NDArray[np.int64], items: npt.NDArray[np.int64], times: npt.NDArray[np.int64], n_items: int
) -> npt.NDArray[np.int64]:
    """The latest time of each distinct (user, item) pair, in (user, item) order: aligned with the CSR of the pairs.

    The pairs arrive sorted by (user, item) (``make_split`` sorts them), so a
    repeated pair is a run of equal keys and CSR.from_pairs keeps one entry for it.
    """
    if not users.size:
        return np.zeros(0, dtype=np.int64)
    keys = users * n_items + items
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    latest: npt.NDArray[np.int64] = np.maximum.reduceat(times, starts)
    return latest


def _rounded(values: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int64]:
    """Round half up (``np.round`` rounds half to even, which would make 2.5 and 3.5 differ in kind)."""
    rounded: npt.NDArray[np.int64] = np.floor(values + 0.5).astype(np.int64)
    return rounded
