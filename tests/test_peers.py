"""The numpy/scipy peers of benchmarks/accuracy.py and the glue that keeps every row on one protocol.

The peers live in ``benchmarks/peers`` (not in the installed package), so the
folder is put on ``sys.path`` here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from movierec.bundle.csr import CSR
from movierec.trainer.data import Ratings
from movierec.trainer.evaluate import evaluate_ranking

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from peers import recctl
from peers.base import NotFittedError, TrainingData
from peers.ease import Ease
from peers.inputs import explicit_ratings_outside
from peers.popularity import Popularity
from peers.puresvd import PureSvd
from peers.report import beyond_accuracy_table, markdown_table, write_coverage_chart
from peers.tuning import grid_search


def dense(csr: CSR) -> npt.NDArray[np.float64]:
    matrix = np.zeros((csr.n_rows, csr.n_cols))
    rows, cols = csr.to_pairs()
    matrix[rows, cols] = 1.0
    return matrix


def random_positives(n_users: int, n_items: int, density: float, seed: int) -> CSR:
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(rng.random((n_users, n_items)) < density)
    return CSR.from_pairs(rows, cols, n_users, n_items)


def planted_blocks(n_groups: int = 3, users_per_group: int = 8, items_per_group: int = 6) -> tuple[CSR, CSR]:
    """Users of group g like exactly the items of group g; one liked item per user is held out as test.

    Any model that recovers the block structure ranks the held-out item first
    once the user's train items are masked.
    """
    train_pairs: list[tuple[int, int]] = []
    test_pairs: list[tuple[int, int]] = []
    for group in range(n_groups):
        items = range(group * items_per_group, (group + 1) * items_per_group)
        for offset in range(users_per_group):
            user = group * users_per_group + offset
            held_out = group * items_per_group + offset % items_per_group
            for item in items:
                (test_pairs if item == held_out else train_pairs).append((user, item))
    n_users, n_items = n_groups * users_per_group, n_groups * items_per_group

    def csr(pairs: list[tuple[int, int]]) -> CSR:
        rows, cols = zip(*pairs, strict=True)
        return CSR.from_pairs(rows, cols, n_users, n_items)

    return csr(train_pairs), csr(test_pairs)


def test_popularity_scores_every_user_by_train_counts() -> None:
    positives = CSR.from_pairs([0, 1, 1, 2, 2, 2], [3, 3, 0, 3, 0, 1], n_rows=3, n_cols=5)
    peer = Popularity()
    peer.fit(TrainingData(positives))
    scores = peer.score(np.array([2, 0], dtype=np.int64))
    np.testing.assert_array_equal(scores, [[2, 1, 0, 3, 0], [2, 1, 0, 3, 0]])


def test_ease_matches_the_per_column_constrained_ridge_solution() -> None:
    """Column j of B solves ridge regression of item j on every *other* item: an independent derivation."""
    positives = random_positives(40, 9, density=0.35, seed=1)
    x = dense(positives)
    gram = x.T @ x
    l2 = 3.0
    peer = Ease(l2=l2)
    peer.fit(TrainingData(positives))
    for j in range(9):
        others = [i for i in range(9) if i != j]
        expected = np.linalg.solve(gram[np.ix_(others, others)] + l2 * np.eye(8), gram[others, j])
        np.testing.assert_allclose(peer.weights[others, j], expected, rtol=1e-4, atol=1e-6)
        assert peer.weights[j, j] == 0.0
    rows = np.array([0, 5, 7], dtype=np.int64)
    np.testing.assert_allclose(peer.score(rows), x[rows] @ peer.weights, rtol=1e-5, atol=1e-6)


def test_weighted_histories_score_with_the_weights_and_leave_b_unchanged() -> None:
    """EASE + recency (generalise.py): B from the plain positives, a user's scores from the weighted history."""
    positives = random_positives(40, 9, density=0.35, seed=1)
    weights = np.random.default_rng(2).uniform(0.1, 1.0, positives.nnz).astype(np.float32)
    plain = Ease(l2=3.0)
    plain.fit(TrainingData(positives))
    weighted = plain.reading(positives, weights)
    np.testing.assert_array_equal(plain.weights, weighted.weights)
    history = np.zeros((40, 9), dtype=np.float32)
    rows, items = positives.to_pairs()
    history[rows, items] = weights
    users = np.array([0, 5, 7], dtype=np.int64)
    np.testing.assert_allclose(weighted.score(users), history[users] @ plain.weights, rtol=1e-5, atol=1e-6)
    assert not np.allclose(weighted.score(users), plain.score(users))


def test_ease_rejects_a_non_positive_l2() -> None:
    with pytest.raises(ValueError, match="l2"):
        Ease(l2=0.0)


def test_puresvd_reconstructs_a_matrix_of_the_chosen_rank_exactly() -> None:
    train, test = planted_blocks(n_groups=3)
    (train_rows, train_cols), (test_rows, test_cols) = train.to_pairs(), test.to_pairs()
    rows, cols = np.concatenate([train_rows, test_rows]), np.concatenate([train_cols, test_cols])
    blocks = CSR.from_pairs(rows, cols, train.n_rows, train.n_cols)  # every block full: rank 3
    peer = PureSvd(factors=3)
    peer.fit(TrainingData(blocks))
    np.testing.assert_allclose(peer.score(np.arange(blocks.n_rows, dtype=np.int64)), dense(blocks), atol=1e-5)


@pytest.mark.parametrize("peer", [PureSvd(factors=3), Ease(l2=1.0)], ids=["puresvd", "ease"])
def test_structure_aware_peers_rank_the_held_out_item_first(peer: PureSvd | Ease) -> None:
    train, test = planted_blocks()
    peer.fit(TrainingData(train))
    metrics = evaluate_ranking(peer.score, train, test, ks=(1,))
    assert metrics["recall@1"] == pytest.approx(1.0)


def test_popularity_cannot_find_the_held_out_items() -> None:
    """The planted example is not trivial: a non-personalised ranking misses most held-out items."""
    train, test = planted_blocks()
    peer = Popularity()
    peer.fit(TrainingData(train))
    assert evaluate_ranking(peer.score, train, test, ks=(1,))["recall@1"] < 0.5


def test_puresvd_refuses_more_factors_than_the_matrix_has() -> None:
    train, _ = planted_blocks()
    with pytest.raises(ValueError, match="factors"):
        PureSvd(factors=train.n_cols).fit(TrainingData(train))


@pytest.mark.parametrize("peer", [Popularity(), Ease(), PureSvd()], ids=["popularity", "ease", "puresvd"])
def test_scoring_before_fit_is_a_clear_error(peer: Popularity | Ease | PureSvd) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        peer.score(np.array([0], dtype=np.int64))


def test_explicit_ratings_keep_everything_but_the_held_out_pairs() -> None:
    user_ids = np.array([10, 20, 30], dtype=np.int64)
    item_ids = np.array([5, 7, 9, 11], dtype=np.int64)
    ratings = Ratings(
        users=np.array([10, 10, 20, 20, 30, 30], dtype=np.int64),
        items=np.array([5, 9, 7, 11, 5, 9], dtype=np.int64),
        ratings=np.array([5, 2, 4, 1, 4, 3], dtype=np.float32),
        timestamps=np.zeros(6, dtype=np.int64),
    )
    valid = CSR.from_pairs([0], [0], 3, 4)  # user 10, item 5
    test = CSR.from_pairs([2], [0], 3, 4)  # user 30, item 5
    kept = explicit_ratings_outside(ratings, user_ids, item_ids, [valid, test])
    got = sorted(zip(kept.rows.tolist(), kept.cols.tolist(), kept.values.tolist(), strict=True))
    assert got == [(0, 2, 2.0), (1, 1, 4.0), (1, 3, 1.0), (2, 2, 3.0)]


def test_explicit_ratings_refuse_ids_missing_from_the_maps() -> None:
    ratings = Ratings(
        users=np.array([10, 99], dtype=np.int64),
        items=np.array([5, 5], dtype=np.int64),
        ratings=np.array([5, 4], dtype=np.float32),
        timestamps=np.zeros(2, dtype=np.int64),
    )
    with pytest.raises(ValueError, match="missing"):
        explicit_ratings_outside(ratings, np.array([10, 20], dtype=np.int64), np.array([5], dtype=np.int64), [])


class _Oracle:
    """Scores the validation items with weight ``quality`` on top of fixed noise: higher quality ranks them higher."""

    def __init__(self, valid: CSR, quality: float) -> None:
        noise = np.random.default_rng(0).random((valid.n_rows, valid.n_cols))
        self._scores = (quality * dense(valid) + noise).astype(np.float32)
        self.fitted_on: CSR | None = None

    def fit(self, data: TrainingData) -> None:
        self.fitted_on = data.positives

    def score(self, user_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return self._scores[user_rows]


def test_grid_search_keeps_the_setting_best_on_valid() -> None:
    fit = random_positives(30, 80, density=0.2, seed=2)
    valid = random_positives(30, 80, density=0.1, seed=3)
    made: list[_Oracle] = []

    def make(quality: float) -> _Oracle:
        made.append(_Oracle(valid, quality))
        return made[-1]

    result = grid_search(make, [{"quality": 0.0}, {"quality": 5.0}, {"quality": 0.5}], TrainingData(fit), valid)
    assert result.best == {"quality": 5.0}
    assert [trial.params["quality"] for trial in result.trials] == [0.0, 5.0, 0.5]
    recalls = [trial.valid_metrics["recall@20"] for trial in result.trials]
    assert recalls[1] > recalls[2] > recalls[0]
    assert all(peer.fitted_on is fit for peer in made)


def test_grid_search_refuses_an_empty_grid() -> None:
    fit = random_positives(5, 5, density=0.5, seed=4)
    with pytest.raises(ValueError, match="empty"):
        grid_search(Popularity, [], TrainingData(fit), fit)


PROTOCOL = {"split": "random", "seed": 42, "min_rating": 4.0, "test_fraction": 0.2, "valid_fraction": 0.1}


def test_protocol_mismatches_name_each_contradicted_setting_only() -> None:
    assert recctl.protocol_mismatches({"seed": 42, "split": "random"}, PROTOCOL) == []
    assert recctl.protocol_mismatches({"seed": 7, "min_rating": 4.0, "extra": 1}, PROTOCOL) == ["seed: 7 != 42"]


def _fake_recctl(tmp_path: Path, evaluation: dict[str, Any], train_exit: int = 0) -> Path:
    """A stand-in ``recctl`` that records its arguments and prints canned JSON."""
    script = tmp_path / "recctl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(tmp_path / 'calls.txt')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1] == 'train':\n"
        f"    print(json.dumps({{'epochs': 3}})); sys.exit({train_exit})\n"
        f"sys.stdout.write({json.dumps(evaluation)!r})\n"
    )
    script.chmod(0o755)
    return script


def _evaluation(**changes: Any) -> dict[str, Any]:
    return {"recall@20": 0.3, "ndcg@20": 0.31, "users_evaluated": 6000, "protocol": dict(PROTOCOL)} | changes


ROW = recctl.RecctlRow("lightgcn-ours", "LightGCN (ours)", ("--model", "lightgcn"))


def test_recctl_row_reports_metrics_and_the_exact_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recctl, "recctl_executable", lambda: _fake_recctl(tmp_path, _evaluation()))
    outcome = recctl.run_recctl_row(ROW, tmp_path / "data", tmp_path, PROTOCOL, 6000, timeout=60)
    assert outcome["metrics"] == {"recall@20": 0.3, "ndcg@20": 0.31}
    assert outcome["train_report"] == {"epochs": 3}
    assert outcome["train_seconds"] > 0
    train_call, evaluate_call = (tmp_path / "calls.txt").read_text().splitlines()
    bundle = tmp_path / "LightGCN_(ours)"
    assert train_call == f"train --data {tmp_path / 'data'} --out {bundle} --model lightgcn --json"
    assert evaluate_call == f"evaluate --model {bundle} --json"


@pytest.mark.parametrize(
    ("evaluation", "reason"),
    [
        (_evaluation(protocol=dict(PROTOCOL, seed=7)), "seed: 7 != 42"),
        (_evaluation(users_evaluated=10), "users_evaluated: 10 != 6000"),
    ],
    ids=["other-seed", "other-users"],
)
def test_recctl_row_on_another_protocol_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evaluation: dict[str, Any], reason: str
) -> None:
    monkeypatch.setattr(recctl, "recctl_executable", lambda: _fake_recctl(tmp_path, evaluation))
    with pytest.raises(recctl.RecctlRowError, match=reason):
        recctl.run_recctl_row(ROW, tmp_path, tmp_path, PROTOCOL, 6000, timeout=60)


def test_recctl_row_failure_names_the_command_and_exit_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recctl, "recctl_executable", lambda: _fake_recctl(tmp_path, _evaluation(), train_exit=3))
    with pytest.raises(recctl.RecctlRowError, match=r"train .* exited 3"):
        recctl.run_recctl_row(ROW, tmp_path, tmp_path, PROTOCOL, 6000, timeout=60)


def test_markdown_table_shows_why_a_row_was_not_run() -> None:
    metrics = {"recall@10": 0.1, "recall@20": 0.2, "ndcg@10": 0.3, "ndcg@20": 0.4}
    lines = markdown_table(
        [
            {"name": "EASE", "metrics": metrics, "train_seconds": 1.5, "params": {"l2": 500.0}},
            {"name": "NGCF", "error": "recctl train exited 2"},
        ]
    )
    assert lines[2].startswith("| **EASE** | 0.1000 | 0.2000 | 0.3000 | 0.4000 | — |")
    assert "| 1.5 |" in lines[2]
    assert "l2=500" in lines[2]
    assert lines[3].startswith("| **NGCF** | not run |") and lines[3].endswith("recctl train exited 2 |")


def test_a_kept_bundle_is_reevaluated_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluation = _evaluation(**{"coverage@20": 0.4, "intra_list_diversity@20": 0.8})
    monkeypatch.setattr(recctl, "recctl_executable", lambda: _fake_recctl(tmp_path, evaluation))
    bundle = tmp_path / recctl.bundle_folder_name(ROW)
    outcome = recctl.evaluate_recctl_bundle(ROW, bundle, PROTOCOL, 6000, timeout=60)
    assert outcome["metrics"] == {"recall@20": 0.3, "ndcg@20": 0.31, "coverage@20": 0.4, "intra_list_diversity@20": 0.8}
    assert (tmp_path / "calls.txt").read_text().splitlines() == [f"evaluate --model {bundle} --json"]
    with pytest.raises(recctl.RecctlRowError, match="seed: 42 != 7"):  # the bundle says 42, the benchmark 7
        recctl.evaluate_recctl_bundle(ROW, bundle, dict(PROTOCOL, seed=7), 6000, timeout=60)


def test_beyond_accuracy_table_says_which_rows_were_not_measured() -> None:
    full = {"ndcg@20": 0.33, "coverage@20": 0.4, "novelty@20": 9.87, "gini_index@20": 0.9}
    full |= {"average_popularity@20": 812.4, "tail_percentage@20": 0.001, "intra_list_diversity@20": 0.75}
    lines = beyond_accuracy_table(
        [
            {"name": "EASE", "metrics": full},
            {"name": "Spark", "metrics": {"ndcg@20": 0.3}, "beyond_accuracy_missing": "pyspark missing"},
            {"name": "NGCF", "error": "recctl train exited 2"},
        ]
    )
    assert lines[2] == "| **EASE** | 0.3300 | 0.4000 | 9.87 | 0.9000 | 812 | 0.0010 | 0.7500 |"
    assert lines[3].startswith("| **Spark** | 0.3000 | not measured: pyspark missing |")
    assert lines[4].startswith("| **NGCF** | not run |")


def test_coverage_chart_plots_the_rows_that_have_both_metrics(tmp_path: Path) -> None:
    path = tmp_path / "coverage.png"
    rows = [{"name": "A", "metrics": {"ndcg@20": 0.3, "coverage@20": 0.4}}, {"name": "B", "metrics": {"ndcg@20": 0.2}}]
    write_coverage_chart(path, rows, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_differences_compare_id_maps_and_exact_positives() -> None:
    train, test = planted_blocks()
    user_ids = np.arange(train.n_rows, dtype=np.int64) * 10
    item_ids = np.arange(train.n_cols, dtype=np.int64) + 100
    split = SimpleNamespace(user_ids=user_ids, item_ids=item_ids, train=train, test=test)
    assert recctl.split_differences(SimpleNamespace(**vars(split)), split) == []
    moved = CSR.from_pairs([0], [1], train.n_rows, train.n_cols)
    other = SimpleNamespace(user_ids=user_ids, item_ids=item_ids + 1, train=train, test=moved)
    assert recctl.split_differences(other, split) == ["item_ids", "test"]


def test_every_benchmark_row_accepts_each_point_of_its_grid() -> None:
    """A misspelt parameter would otherwise surface minutes into a benchmark run."""
    import accuracy

    rows = accuracy.peer_rows(lambda: cast(Any, object()))  # constructing SparkAls must not start Spark
    keys = [row.key for row in rows] + [row.key for row in accuracy.RECCTL_ROWS]
    assert len(set(keys)) == len(keys)
    for row in rows:
        assert row.grid, row.key
        for params in row.grid:
            row.make(**params)


def test_grid_is_the_cartesian_product_in_the_order_given() -> None:
    import accuracy

    assert accuracy._grid(a=(1, 2), b=(3.0,)) == ({"a": 1, "b": 3.0}, {"a": 2, "b": 3.0})
