"""The evaluator against a ranking worked out by hand (design notes §4)."""

from __future__ import annotations

from math import log2

import numpy as np
import numpy.typing as npt
import pytest

from movierec.bundle.csr import CSR
from movierec.trainer.evaluate import evaluate_ranking, evaluate_vectors, top_k_items

# 3 users x 6 items.
# user 0: train {0}, test {1, 4}; scores 9 4 5 4 3 1 -> item 0 masked, ranking 2, 1, 3, 4, 5
#         (items 1 and 3 tie at 4: the lower row, 1, goes first).
# user 1: train {2}, no test items -> not evaluated.
# user 2: train {}, test {5}; scores 0 0 2 0 0 2 -> ranking 2, 5, 0, 1, 3, 4.
SCORES = np.array(
    [[9, 4, 5, 4, 3, 1], [1, 2, 3, 4, 5, 6], [0, 0, 2, 0, 0, 2]],
    dtype=np.float32,
)
TRAIN = CSR.from_pairs([0, 1], [0, 2], n_rows=3, n_cols=6)
TEST = CSR.from_pairs([0, 0, 2], [1, 4, 5], n_rows=3, n_cols=6)


def score_rows(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    return SCORES[rows]


def test_metrics_match_the_hand_computed_example() -> None:
    got = evaluate_ranking(score_rows, TRAIN, TEST, ks=(2, 5))
    # @2: user 0 gets [2, 1] -> one hit at rank 2 of 2 test items; user 2 gets [2, 5] -> hit at rank 2 of 1.
    ndcg_user0_at2 = (1 / log2(3)) / (1 + 1 / log2(3))
    ndcg_user2 = (1 / log2(3)) / 1
    assert got["recall@2"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert got["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert got["ndcg@2"] == pytest.approx((ndcg_user0_at2 + ndcg_user2) / 2)
    assert got["seed_recall@2"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    # @5: user 0 gets [2, 1, 3, 4, 5] -> hits at ranks 2 and 4; user 2 unchanged.
    ndcg_user0_at5 = (1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3))
    assert got["recall@5"] == pytest.approx((2 / 2 + 1 / 1) / 2)
    assert got["precision@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert got["ndcg@5"] == pytest.approx((ndcg_user0_at5 + ndcg_user2) / 2)
    assert got["seed_recall@5"] == pytest.approx((2 / 2 + 1 / 1) / 2)
    assert got["users_evaluated"] == 2


def test_seed_recall_differs_from_recall_when_test_set_exceeds_k() -> None:
    # user 0 of a 1-user matrix: 3 test items, K = 1, the top item is a hit.
    train = CSR.from_pairs([], [], n_rows=1, n_cols=4)
    test = CSR.from_pairs([0, 0, 0], [0, 1, 2], n_rows=1, n_cols=4)
    got = evaluate_ranking(lambda rows: np.array([[4, 3, 2, 1]], dtype=np.float32), train, test, ks=(1,))
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["seed_recall@1"] == pytest.approx(1.0)
    assert got["ndcg@1"] == pytest.approx(1.0)


def test_batching_does_not_change_the_result() -> None:
    whole = evaluate_ranking(score_rows, TRAIN, TEST, ks=(2, 5), batch_size=1024)
    one_by_one = evaluate_ranking(score_rows, TRAIN, TEST, ks=(2, 5), batch_size=1)
    assert whole == pytest.approx(one_by_one)


def test_evaluate_vectors_scores_by_dot_product() -> None:
    users = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    items = np.array([[3, 0], [2, 0], [1, 0], [0, 3], [0, 2], [0, 1]], dtype=np.float32)
    dense = users @ items.T
    by_vectors = evaluate_vectors(users, items, TRAIN, TEST, ks=(2, 3))
    by_scores = evaluate_ranking(lambda rows: dense[rows], TRAIN, TEST, ks=(2, 3))
    assert by_vectors == pytest.approx(by_scores)


def test_top_k_breaks_ties_by_lower_item_and_orders_best_first() -> None:
    scores = np.array([[1, 3, 3, 2, 3], [0, 0, 0, 0, 0]], dtype=np.float32)
    assert top_k_items(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert top_k_items(scores, 4).tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]


def test_nan_scores_and_bad_k_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(lambda rows: np.full((rows.size, 6), np.nan, dtype=np.float32), TRAIN, TEST)
    with pytest.raises(ValueError, match="k=7"):
        evaluate_ranking(score_rows, TRAIN, TEST, ks=(7,))


def test_evaluator_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, movierec.trainer.evaluate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
