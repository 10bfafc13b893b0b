"""The cold-items protocol's pieces (benchmarks/cold_items.py): the held-out draw and the two rankings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_graphsage import write_taste_data

from movierec.bundle import CSR
from movierec.clients.cli.main import main
from movierec.trainer.cold_items import cold_draw, cold_positives, rankings, without_items
from movierec.trainer.data import load_dataset, make_split


def test_cold_movies_are_held_out_entirely_and_split_in_halves(tmp_path: Path) -> None:
    dataset = load_dataset(write_taste_data(tmp_path / "data", n_users=12, per_genre=10))
    valid_ids, test_ids = cold_draw(dataset, 4.0, 0.2, seed=3)
    assert valid_ids.size == test_ids.size == 4 and not set(valid_ids) & set(test_ids)
    warm = without_items(dataset, np.concatenate([valid_ids, test_ids]))
    assert not np.isin(warm.ratings.items, np.concatenate([valid_ids, test_ids])).any()
    split = make_split(warm, min_rating=4.0, seed=42)
    assert not np.isin(split.item_ids, test_ids).any()  # the model cannot have a row for a cold movie
    cold = cold_positives(dataset, split, test_ids, 4.0)
    liked = dataset.ratings.ratings >= 4.0
    assert cold.indices.size == int((np.isin(dataset.ratings.items, test_ids) & liked).sum())


def test_cold_only_and_among_all_rankings() -> None:
    """User 0's cold positive is the best cold movie, but 25 warm movies outscore it: only 'among all' misses it."""
    n_warm, n_cold = 25, 25
    users = np.array([[1.0, 0.0]], dtype=np.float32)
    warm = np.tile(np.array([[2.0, 0.0]], dtype=np.float32), (n_warm, 1))
    cold = np.zeros((n_cold, 2), dtype=np.float32)
    cold[7] = [1.0, 0.0]
    split = type("S", (), {"n_users": 1, "train": CSR.from_pairs([0], [0], 1, n_warm)})()
    result = rankings(users, warm, cold, split, CSR.from_pairs([0], [7], 1, n_cold))
    assert result["cold_only"]["recall@20"] == 1.0 and result["cold_only"]["ndcg@20"] == 1.0
    assert result["among_all"]["recall@20"] == 0.0  # 24 unmasked warm movies rank above it
    warm[1:] = [-1.0, 0.0]  # now only the masked warm movie would outscore it
    assert rankings(users, warm, cold, split, CSR.from_pairs([0], [7], 1, n_cold))["among_all"]["ndcg@20"] == 1.0


def test_recctl_evaluate_cold_items_runs_the_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_taste_data(tmp_path / "data", n_users=24, per_genre=100)
    assert main(["evaluate", "--cold-items", "--data", str(data), "--time-budget", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"]["test_cold_movies"] == 40
    cold_only = {name: r["cold_only"]["ndcg@20"] for name, r in result["results"].items()}
    # Tastes here are genres: every feature-based method finds the user's genre among the cold movies,
    # the same list for everyone cannot.
    assert min(cold_only.values()) == cold_only["genre popularity"] < cold_only["GraphSAGE (item tower)"]
    small = write_taste_data(tmp_path / "small", n_users=8, per_genre=5)
    assert main(["evaluate", "--cold-items", "--data", str(small)]) != 0
    assert "only 2 test cold movies" in capsys.readouterr().err
