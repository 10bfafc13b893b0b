"""The standard split (README: "Accuracy") and the temporal option, on small generated datasets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from movierec.bundle import CSR
from movierec.errors import DataError
from movierec.trainer.data import Dataset, Ratings, Split, make_split


def half_up(x: float) -> int:
    """The split's rounding rule: nearest whole number, halves up."""
    return math.floor(x + 0.5)


def synthetic(n_users: int = 40, n_items: int = 60, density: float = 0.3, seed: int = 0) -> Dataset:
    """Random ratings 1..5 with distinct timestamps; ids are sparse (not 0..n-1) on purpose."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(mask)
    n = users.size
    ratings = Ratings(
        users=(users * 7 + 3).astype(np.int64),
        items=(items * 5 + 100).astype(np.int64),
        ratings=rng.integers(1, 6, n).astype(np.float32),
        timestamps=rng.permutation(n).astype(np.int64) + 1_000,
    )
    return Dataset("synthetic", "table", Path("synthetic"), ratings, None, "0" * 64)


def pairs(csr: CSR) -> set[tuple[int, int]]:
    rows, cols = csr.to_pairs()
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


def positive_pairs(ds: Dataset, split: Split, min_rating: float = 4.0) -> set[tuple[int, int]]:
    keep = ds.ratings.ratings >= min_rating
    rows = np.searchsorted(split.user_ids, ds.ratings.users[keep])
    cols = np.searchsorted(split.item_ids, ds.ratings.items[keep])
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


def test_parts_partition_the_positives() -> None:
    ds = synthetic()
    split = make_split(ds)
    train, fit, valid, test = pairs(split.train), pairs(split.fit), pairs(split.valid), pairs(split.test)
    assert train | test == positive_pairs(ds, split)
    assert not train & test
    assert fit | valid == train and not fit & valid
    assert len(test) == half_up(0.2 * len(positive_pairs(ds, split)))
    assert len(valid) == half_up(0.1 * len(train))
    for csr in (split.seen, split.train, split.fit, split.valid, split.test):
        assert csr.validate() is None and csr.n_rows == split.n_users and csr.n_cols == split.n_items


def test_id_maps_are_sorted_and_seen_holds_every_rating() -> None:
    ds = synthetic()
    split = make_split(ds)
    assert split.user_ids.tolist() == sorted(set(ds.ratings.users.tolist()))
    assert split.item_ids.tolist() == sorted(set(ds.ratings.items.tolist()))
    assert split.seen.nnz == len(ds.ratings)  # whatever the rating
    assert pairs(split.train) <= pairs(split.seen)


def test_same_seed_same_split_other_seed_other_split() -> None:
    ds = synthetic()
    a, b, c = make_split(ds, seed=7), make_split(ds, seed=7), make_split(ds, seed=8)
    for part in ("train", "fit", "valid", "test"):
        assert np.array_equal(getattr(a, part).indptr, getattr(b, part).indptr)
        assert np.array_equal(getattr(a, part).indices, getattr(b, part).indices)
    assert pairs(a.test) != pairs(c.test)
    assert pairs(a.valid) != pairs(c.valid)


def test_split_ignores_line_order() -> None:
    ds = synthetic()
    order = np.random.default_rng(1).permutation(len(ds.ratings))
    r = ds.ratings
    shuffled = Dataset(
        ds.name, ds.format, ds.path,
        Ratings(r.users[order], r.items[order], r.ratings[order], r.timestamps[order]),
        None, ds.checksum,
    )  # fmt: skip
    assert pairs(make_split(ds).test) == pairs(make_split(shuffled).test)


def test_min_rating_changes_the_positives() -> None:
    ds = synthetic()
    strict, loose = make_split(ds, min_rating=5.0), make_split(ds, min_rating=3.0)
    assert strict.train.nnz + strict.test.nnz == int((ds.ratings.ratings >= 5).sum())
    assert loose.train.nnz + loose.test.nnz == int((ds.ratings.ratings >= 3).sum())


def test_protocol_records_how_the_split_was_made() -> None:
    split = make_split(synthetic(), seed=3, test_fraction=0.25, valid_fraction=0.05, min_rating=3.5)
    assert split.protocol == {
        "split": "random", "seed": 3, "test_fraction": 0.25, "valid_fraction": 0.05, "min_rating": 3.5,
        "dataset": "synthetic", "dataset_sha256": "0" * 64,
    }  # fmt: skip


def test_temporal_split_holds_out_each_users_latest_positives() -> None:
    ds = synthetic()
    split = make_split(ds, method="temporal")
    r = ds.ratings
    keep = r.ratings >= 4
    rows = np.searchsorted(split.user_ids, r.users[keep])
    cols = np.searchsorted(split.item_ids, r.items[keep])
    times = r.timestamps[keep]
    for user in range(split.n_users):
        mine = rows == user
        by_time = cols[mine][np.argsort(times[mine])].tolist()
        n_test = half_up(0.2 * len(by_time))
        n_valid = half_up(0.1 * (len(by_time) - n_test))
        assert sorted(split.test.row(user).tolist()) == sorted(by_time[len(by_time) - n_test :])
        assert sorted(split.valid.row(user).tolist()) == sorted(
            by_time[len(by_time) - n_test - n_valid : len(by_time) - n_test]
        )
    assert split.protocol["split"] == "temporal"


def test_temporal_ties_break_by_item_id() -> None:
    r = Ratings(
        users=np.array([1, 1, 1, 1, 1], dtype=np.int64),
        items=np.array([50, 40, 30, 20, 10], dtype=np.int64),
        ratings=np.full(5, 5.0, dtype=np.float32),
        timestamps=np.array([1, 9, 9, 9, 9], dtype=np.int64),
    )
    split = make_split(Dataset("t", "table", Path("t"), r, None, ""), method="temporal", valid_fraction=0.0)
    assert split.item_ids[split.test.row(0)].tolist() == [40]  # the same time: the highest item id is "latest"


def tiny(ratings: list[float]) -> Dataset:
    n = len(ratings)
    r = Ratings(
        np.ones(n, dtype=np.int64), np.arange(n, dtype=np.int64), np.array(ratings, dtype=np.float32),
        np.arange(n, dtype=np.int64),
    )  # fmt: skip
    return Dataset("tiny", "table", Path("tiny.csv"), r, None, "")


@pytest.mark.parametrize("ratings", [[1.0, 2.0, 5.0], [1.0, 2.0]])
def test_too_few_positives_is_a_clear_error(ratings: list[float]) -> None:
    with pytest.raises(DataError, match="too few to split"):
        make_split(tiny(ratings))


def test_empty_test_set_is_refused() -> None:
    with pytest.raises(DataError, match="empty test set"):
        make_split(tiny([5.0, 5.0]), test_fraction=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_fraction": 0.0}, "test fraction"),
        ({"test_fraction": 1.0}, "test fraction"),
        ({"valid_fraction": -0.1}, "validation fraction"),
        ({"method": "leave-one-out"}, "unknown split method"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        make_split(synthetic(), **kwargs)  # type: ignore[arg-type]


def test_temporal_split_needs_timestamps() -> None:
    ds = synthetic()
    no_time = Dataset(ds.name, ds.format, ds.path, ds.ratings, None, ds.checksum, has_timestamps=False)
    with pytest.raises(DataError, match="needs timestamps"):
        make_split(no_time, method="temporal")
