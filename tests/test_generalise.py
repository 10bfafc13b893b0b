"""The dataset shapes of benchmarks/generalise.py and its verdicts, on small generated ratings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from movierec.trainer.data import Dataset, Ratings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import generalise

N_USERS, N_ITEMS = 1000, 600


def skewed_dataset() -> Dataset:
    """Item i is rated by each user with probability ~1/(i+1)^0.4: a popular head and a long tail."""
    rng = np.random.default_rng(3)
    chance = np.minimum(1.0, 0.9 / np.arange(1, N_ITEMS + 1) ** 0.4)
    rated = rng.random((N_USERS, N_ITEMS)) < chance
    users, items = np.nonzero(rated)
    ratings = Ratings(
        users=users.astype(np.int64) + 1,
        items=items.astype(np.int64) + 1,
        ratings=rng.integers(1, 6, size=users.size).astype(np.float32),
        timestamps=np.arange(users.size, dtype=np.int64),
    )
    return Dataset(name="skewed", format="ml-1m", path=Path("."), ratings=ratings, movies=None, checksum="x")


def counts(dataset: Dataset) -> dict[int, int]:
    items, n = np.unique(dataset.ratings.items, return_counts=True)
    return dict(zip(items.tolist(), n.tolist(), strict=True))


def test_a_user_fraction_keeps_whole_users() -> None:
    base = skewed_dataset()
    small = generalise.user_fraction(0.1, "tenth")(base)
    kept = np.unique(small.ratings.users)
    assert small.name == "tenth" and kept.size == N_USERS // 10
    assert len(small.ratings) == int(np.isin(base.ratings.users, kept).sum())  # every rating of a kept user


def test_rare_items_keep_the_head_and_the_rarely_rated() -> None:
    base_counts = counts(skewed_dataset())
    kept = counts(generalise.rare_items_and_head(skewed_dataset()))
    head = set(sorted(base_counts, key=lambda item: (-base_counts[item], item))[:100])
    assert set(kept) == {item for item, n in base_counts.items() if n <= 100} | head
    assert all(kept[item] == base_counts[item] for item in kept)  # items are kept whole
    assert any(n > 100 and item not in head for item, n in base_counts.items())  # something was dropped


def test_the_long_tail_variant_thins_only_the_tail() -> None:
    base = skewed_dataset()
    thinned = generalise.long_tail(base)
    users = np.unique(thinned.ratings.users)
    of_kept_users = generalise.user_fraction(0.1, "x")(base)
    base_counts, before, after = counts(base), counts(of_kept_users), counts(thinned)
    head = sorted(base_counts, key=lambda item: (-base_counts[item], item))[:300]
    assert users.size <= N_USERS // 10
    assert all(after.get(item, 0) == before.get(item, 0) for item in head)
    tail_before = sum(n for item, n in before.items() if item not in head)
    tail_after = sum(n for item, n in after.items() if item not in head)
    assert 0.2 < tail_after / tail_before < 0.5


def _summary(recall: float, ndcg: float) -> dict[str, Any]:
    return {
        "summary": {name: {"mean": v, "min": v, "max": v} for name, v in (("recall@20", recall), ("ndcg@20", ndcg))}
    }


def test_the_verdict_names_the_metric_we_trail_on() -> None:
    result = {"rows": {"ours": _summary(0.30, 0.33), "EASE": _summary(0.29, 0.34), "iALS": _summary(0.28, 0.30)}}
    text = generalise.verdict(result)
    assert "vs EASE +0.0100 / -0.0100 (behind on ndcg@20" in text
    assert "vs iALS +0.0200 / +0.0300 (ahead" in text


def test_a_tie_to_the_results_precision_is_level_not_behind() -> None:
    rows = {"ours": _summary(0.30, 0.1701), "EASE": _summary(0.29, 0.1701), "iALS": _summary(0.31, 0.1700)}
    tied = {"name": "tie", "rows": rows}
    assert "(level on ndcg@20" in generalise.verdict(tied)
    lines = generalise.standing({"datasets": [tied]})
    assert lines[0] == "- Against EASE: ahead on both metrics on 0 of 1 datasets; level on tie (ndcg@20)."
    assert lines[1] == "- Against iALS: ahead on both metrics on 0 of 1 datasets; behind on tie (recall@20)."


def test_a_sweep_setting_takes_the_type_of_the_field() -> None:
    assert generalise.parse_setting("temperature=0.12") == ("temperature", 0.12)
    assert generalise.parse_setting("layers=2") == ("layers", 2)
    assert generalise.parse_setting("refit=false") == ("refit", False)
    for bad in ("layers", "colour=red", "layers=two", "search_space=x"):
        with pytest.raises(SystemExit):
            generalise.parse_setting(bad)


def test_the_report_counts_the_later_runs_cut_for_trailing() -> None:
    first = {"overrides": {}, "cut": False}
    runs = [
        {"search": [first, {"overrides": {"layers": 2}, "cut": False}, {"overrides": {"recency": 6.0}, "cut": True}]},
        {"search": [first, {"overrides": {"layers": 2}, "cut": True}, {"overrides": {"recency": 6.0}, "cut": True}]},
    ]
    assert generalise._cuts(runs) == "; 3 of the 4 later selection runs cut for trailing"
    assert generalise._cuts([{"search": [first, {"overrides": {"layers": 2}, "cut": False}]}]) == ""
    assert generalise._cuts([{"search": []}]) == ""  # no search: nothing to count
