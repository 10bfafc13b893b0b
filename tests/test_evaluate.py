"""The evaluator against a ranking worked out by hand (design notes §4)."""

from __future__ import annotations

from math import log2

import numpy as np
import numpy.typing as npt
import pytest

from movierec.bundle.csr import CSR
from movierec.trainer.evaluate import (
    WORKING_BYTES_PER_SCORE,
    chunk_rows,
    evaluate_ranking,
    evaluate_vectors,
    top_k_items,
)

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


def _random_problem(n_users: int, n_items: int, seed: int) -> tuple[CSR, CSR]:
    rng = np.random.default_rng(seed)

    def pairs(per_user: int) -> CSR:
        size = n_users * per_user
        return CSR.from_pairs(rng.integers(0, n_users, size), rng.integers(0, n_items, size), n_users, n_items)

    return pairs(8), pairs(3)


def test_memory_chunks_do_not_change_a_single_bit() -> None:
    # 2,500 users over three accounting blocks of 1,024; scores with many ties (integers 0-4) so the
    # tie rule is exercised. One user per chunk, 7 per chunk, and everything in one chunk agree exactly.
    n_users, n_items = 2500, 300
    train, test = _random_problem(n_users, n_items, seed=3)
    scores = np.random.default_rng(4).integers(0, 5, (n_users, n_items)).astype(np.float32)
    results = [
        evaluate_ranking(lambda rows: scores[rows], train, test, ks=(5, 20), memory_budget=budget)
        for budget in (1, 7 * n_items * WORKING_BYTES_PER_SCORE, 2**40)
    ]
    assert results[0] == results[1] == results[2]
    users = np.random.default_rng(5).standard_normal((n_users, 16), dtype=np.float32)
    items = np.random.default_rng(6).standard_normal((n_items, 16), dtype=np.float32)
    small = evaluate_vectors(users, items, train, test, memory_budget=50 * n_items * WORKING_BYTES_PER_SCORE)
    assert small == evaluate_vectors(users, items, train, test)


def test_chunk_rows_follows_the_budget() -> None:
    assert chunk_rows(60_000, 256 * 2**20, batch_size=1024) == 256 * 2**20 // (60_000 * WORKING_BYTES_PER_SCORE)
    assert chunk_rows(3_706, 256 * 2**20, batch_size=1024) == 1024  # ML-1M: the batch size binds, as before
    assert chunk_rows(10**9, 1, batch_size=1024) == 1  # always progress, one user at a time
    with pytest.raises(ValueError, match="memory_budget"):
        chunk_rows(10, 0)


def test_many_users_are_never_scored_as_one_matrix() -> None:
    import tracemalloc

    n_users, n_items, budget = 1500, 6000, 4 * 2**20  # all scores at once: 36 MB, 216 MB with temporaries
    train, test = _random_problem(n_users, n_items, seed=7)
    user_vectors = np.random.default_rng(8).standard_normal((n_users, 8), dtype=np.float32)
    item_vectors = np.random.default_rng(9).standard_normal((n_items, 8), dtype=np.float32)
    calls: list[int] = []

    def score(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        calls.append(rows.shape[0])
        return user_vectors[rows] @ item_vectors.T

    tracemalloc.start()
    try:
        got = evaluate_ranking(score, train, test, memory_budget=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(calls) == chunk_rows(n_items, budget) < n_users
    assert sum(calls) == got["users_evaluated"] == int((test.row_lengths() > 0).sum())
    assert peak <= budget, f"peak {peak / 2**20:.1f} MiB over the {budget / 2**20:.0f} MiB budget"


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
