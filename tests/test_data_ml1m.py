"""The real MovieLens-1M (from MOVIEREC_DATA or ../shared/data/ml-1m): exact published numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from movierec.clients.cli import main
from movierec.trainer.data import dataset_stats, item_metadata, load_dataset, make_split

pytestmark = pytest.mark.ml1m

HISTOGRAM = {"1": 56174, "2": 107557, "3": 261197, "4": 348971, "5": 226310}


def half_up(x: float) -> int:
    """The split's rounding rule: nearest whole number, halves up."""
    return math.floor(x + 0.5)


def test_ml1m_stats_match_the_published_counts(ml1m_dir: Path) -> None:
    ds = load_dataset(ml1m_dir)
    assert (ds.name, ds.format) == ("ml-1m", "ml-dat")
    stats = dataset_stats(ds)
    assert (stats["ratings"], stats["users"], stats["items"], stats["movies"]) == (1_000_209, 6_040, 3_706, 3_883)
    assert stats["positives"] == 575_281
    assert stats["rating_histogram"] == HISTOGRAM
    assert (stats["first_timestamp"], stats["last_timestamp"]) == (956_703_932, 1_046_454_590)
    first = ds.ratings
    assert (first.users[0], first.items[0], first.ratings[0], first.timestamps[0]) == (1, 1193, 5.0, 978_300_760)


def test_ml1m_latin1_titles_years_and_genres(ml1m_dir: Path) -> None:
    ds = load_dataset(ml1m_dir)
    meta = item_metadata(ds, np.array([1, 73, 582, 47], dtype=np.int64))
    assert meta.titles == ["Toy Story", "Misérables, Les", "Metisse (Café au Lait)", "Seven (Se7en)"]
    assert meta.years == [1995, 1995, 1993, 1995]
    assert meta.genres[0] == ["Animation", "Children's", "Comedy"]


def test_recctl_data_stats_json_on_ml1m(
    ml1m_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(main, "COMMAND_MODULES", ("movierec.clients.cli.data_cmd",))
    assert main.main(["data", "stats", "--data", str(ml1m_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {k: stats[k] for k in ("ratings", "users", "items", "movies", "positives")} == {
        "ratings": 1_000_209, "users": 6_040, "items": 3_706, "movies": 3_883, "positives": 575_281,
    }  # fmt: skip
    assert stats["rating_histogram"] == HISTOGRAM


@pytest.mark.slow
def test_ml1m_standard_split_sizes(ml1m_dir: Path) -> None:
    split = make_split(load_dataset(ml1m_dir))
    assert (split.n_users, split.n_items) == (6_040, 3_706)
    assert split.seen.nnz == 1_000_209
    assert split.train.nnz + split.test.nnz == 575_281
    assert split.test.nnz == half_up(0.2 * 575_281)
    assert split.valid.nnz == half_up(0.1 * split.train.nnz)
    assert split.fit.nnz == split.train.nnz - split.valid.nnz
