"""Property: any valid ratings table written in any supported format loads back exactly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from movierec.errors import DataError
from movierec.trainer.data import load_dataset, make_split

HALF_STARS = [x / 2 for x in range(0, 21)]


@st.composite
def ratings_rows(draw: st.DrawFn) -> list[tuple[int, int, float, int]]:
    pairs = draw(
        st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)), min_size=1, max_size=40, unique=True)
    )
    return [(user, item, draw(st.sampled_from(HALF_STARS)), draw(st.integers(0, 2**40))) for user, item in pairs]


def write(folder: Path, fmt: str, rows: list[tuple[int, int, float, int]], delimiter: str) -> None:
    folder.mkdir(parents=True)
    if fmt == "ml-dat":
        (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in rows))
    elif fmt == "ml-100k":
        (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in rows))
    elif fmt == "ml-csv":
        body = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
        (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + body)
    else:
        lines = [delimiter.join(("user_id", "item_id", "rating", "timestamp"))]
        lines += [delimiter.join(str(v) for v in row) for row in rows]
        (folder / "table.csv").write_text("\n".join(lines) + "\n")


@settings(max_examples=40, deadline=None)
@given(
    rows=ratings_rows(),
    fmt=st.sampled_from(["ml-dat", "ml-100k", "ml-csv", "table"]),
    delimiter=st.sampled_from([",", "\t", ";", "|"]),
)
def test_written_ratings_load_back_exactly(rows: list[tuple[int, int, float, int]], fmt: str, delimiter: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        write(folder, fmt, rows, delimiter)
        ds = load_dataset(folder)
    assert ds.format == fmt
    users, items, ratings, times = zip(*rows, strict=True)
    assert ds.ratings.users.tolist() == list(users)
    assert ds.ratings.items.tolist() == list(items)
    assert ds.ratings.ratings.tolist() == list(ratings)
    assert ds.ratings.timestamps.tolist() == list(times)


@settings(max_examples=40, deadline=None)
@given(
    rows=ratings_rows(),
    seed=st.integers(0, 2**32 - 1),
    test_fraction=st.floats(0.05, 0.95),
    valid_fraction=st.floats(0.0, 0.9),
    method=st.sampled_from(["random", "temporal"]),
)
def test_split_parts_always_partition_the_positives(
    rows: list[tuple[int, int, float, int]], seed: int, test_fraction: float, valid_fraction: float, method: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        write(folder, "ml-dat", rows, ",")
        ds = load_dataset(folder)
    try:
        split = make_split(
            ds, seed=seed, test_fraction=test_fraction, valid_fraction=valid_fraction, method=method, min_rating=2.5
        )
    except DataError as exc:
        assert "too few to split" in str(exc) or "leave an empty" in str(exc)
        return

    def pairs(name: str) -> set[tuple[int, int]]:
        rows_, cols = getattr(split, name).to_pairs()
        return set(zip(split.user_ids[rows_].tolist(), split.item_ids[cols].tolist(), strict=True))

    positives = {(u, i) for u, i, r, _ in rows if r >= 2.5}
    assert pairs("train") | pairs("test") == positives and not pairs("train") & pairs("test")
    assert pairs("fit") | pairs("valid") == pairs("train") and not pairs("fit") & pairs("valid")
    assert pairs("seen") == {(u, i) for u, i, _, _ in rows}
    assert pairs("test") and pairs("fit")
    assert np.all(np.diff(split.user_ids) > 0) and np.all(np.diff(split.item_ids) > 0)
